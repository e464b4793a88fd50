/* psw_data: training and test data for psw — IDX and CSV readers,
 * partitions, and per-epoch shuffling.
 *
 * Formats:
 *   IDX (MNIST / Fashion-MNIST), gzipped or not: an images file (magic
 *   0x00000803: count, rows, cols, big-endian u32, then count*rows*cols
 *   unsigned bytes) and a labels file (magic 0x00000801: count, then count
 *   unsigned bytes).
 *   CSV, gzipped or not: one sample per line, the integer label first, then
 *   the features; an optional header line (its first field not a number);
 *   blank lines are skipped.
 *   Criteo click logs (psw_ctr.h): the 13 integer features become the
 *   features (log-transformed, not scaled), the 26 categorical ids the
 *   keys of an embedding table (psw_dataset.keys).
 * Features are float32 multiplied by the configured scale; labels int32.
 *
 * Partitions: the (optionally limited) sample set of N samples is cut into
 * P contiguous partitions, partition p = samples [p*N/P, (p+1)*N/P).  A
 * worker loads only the partitions it is given (IDX records are seeked
 * to, not parsed).
 *
 * Errors: PS_EIO (cannot open) or PS_EFORMAT with "PATH: byte OFFSET: ..."
 * (IDX, offsets into the uncompressed stream; a gzip stream cut short or
 * corrupt, either format: "... truncated or corrupt gzip file (WHY)"),
 * "PATH: compressed byte OFFSET: ..." (bytes after the gzip stream that
 * are no gzip member, psw_gz.h) or "PATH:LINE: ..." (CSV); PS_EINVAL for
 * bad arguments; PS_ENOMEM.  An IDX file with bytes after its last
 * record is refused (a plain one whatever is loaded, a gzipped one when
 * its last record is).
 *
 * Thread-safety: functions keep no global state; a loaded dataset is
 * read-only and may be shared by threads. */
#ifndef PSW_DATA_H
#define PSW_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "ps_config.h"
#include "ps_error.h"

typedef struct psw_dataset {
  uint64_t n;       /* samples loaded */
  uint32_t dim;     /* features per sample */
  uint32_t rows;    /* IDX images: rows and columns (0 for CSV) */
  uint32_t cols;
  uint64_t total;   /* samples in the (limited) file, before partitioning */
  float *x;         /* n * dim features, row-major, scaled; owned */
  int32_t *y;       /* n labels; owned */
  uint32_t fields;  /* criteo: categorical fields per sample (0 otherwise) */
  uint64_t *keys;   /* criteo: n * fields table keys (psw_ctr_key); owned */
} psw_dataset;

/* Which samples to load.  A NULL selection loads every sample. */
typedef struct psw_data_sel {
  uint64_t limit;        /* use only the first LIMIT samples (0: all) */
  uint32_t nparts;       /* P, partitions of those samples (0 counts as 1) */
  const uint32_t *parts; /* partitions to load, each < P, no repeats (borrowed);
                            NULL: all of them */
  size_t nsel;           /* entries in parts */
} psw_data_sel;

/* psw_data_partition gives the sample range [*BEGIN, *END) of partition
 * PART of NPARTS over N samples. */
void psw_data_partition(uint64_t n, uint32_t nparts, uint32_t part, uint64_t *begin,
                        uint64_t *end);

/* psw_data_file_index returns the index in the (limited) file of sample
 * I of a dataset of TOTAL samples that holds partitions PARTS[0..NSEL)
 * (ascending) of NPARTS, as psw_data_load loads them; PARTS NULL: all
 * (I itself).  Messages name a sample as the user finds it. */
uint64_t psw_data_file_index(uint64_t total, uint32_t nparts, const uint32_t *parts, size_t nsel,
                             uint64_t i);

/* psw_data_label_file returns the file that holds the labels of the
 * training set (TEST == 0) or test set of CONF: the labels file for idx,
 * the one file for csv and criteo; NULL when CONF names none. */
const char *psw_data_label_file(const ps_data_conf *conf, int test);

/* psw_data_parts_for_rank writes to OUT (caller-owned, NPARTS entries) the
 * partitions a worker of rank RANK among WORKERS gets by default (p with
 * p % WORKERS == RANK) and returns how many. */
size_t psw_data_parts_for_rank(uint32_t nparts, uint32_t rank, uint32_t workers, uint32_t *out);

/* psw_data_load_idx loads the selected samples of the IMAGES / LABELS IDX
 * pair into *D (zeroed first; release with psw_data_release).  Samples
 * come in increasing file order.  Returns 0 or a PS_E* code with a message
 * in EB (nothing to release then). */
int psw_data_load_idx(psw_dataset *d, const char *images, const char *labels, float scale,
                      const psw_data_sel *sel, ps_errbuf *eb);

/* psw_data_csv_line gives in *LINENO the line (1-based, a header line and
 * blank lines counted) of CSV file PATH that holds sample INDEX (0-based,
 * in the file's order), reading the file again: for messages that name a
 * sample as an editor finds it.  0 or a PS_E* code with a message in EB. */
int psw_data_csv_line(const char *path, uint64_t index, uint64_t *lineno, ps_errbuf *eb);

/* psw_data_load_csv is psw_data_load_idx for one CSV file. */
int psw_data_load_csv(psw_dataset *d, const char *path, float scale, const psw_data_sel *sel,
                      ps_errbuf *eb);

/* psw_data_load loads the training set (TEST == 0: the selected partitions
 * PARTS[0..NSEL) of conf->partitions, NULL PARTS: all, first conf->limit
 * samples) or the whole test set (TEST != 0) described by CONF, in its
 * format.  Returns as psw_data_load_idx; PS_ECONFIG when CONF names no
 * file for that set. */
int psw_data_load(psw_dataset *d, const ps_data_conf *conf, int test, const uint32_t *parts,
                  size_t nsel, ps_errbuf *eb);

/* psw_data_conf_check checks, before anything else is done, that CONF
 * names the files of its training set (TEST == 0) or test set and that
 * they can be read: 0, or PS_ECONFIG saying which is missing (a worker
 * learns of a typo before it takes a rank or waits for the shards). */
int psw_data_conf_check(const ps_data_conf *conf, int test, ps_errbuf *eb);

/* psw_data_release frees D's arrays and zeroes it; idempotent. */
void psw_data_release(psw_dataset *d);

/* psw_data_shuffle writes to IDX (caller-owned, N entries) a permutation
 * of 0..N-1 that depends only on (SEED, EPOCH, N): every run and every
 * platform gives the same order. */
void psw_data_shuffle(uint32_t *idx, uint32_t n, uint64_t seed, uint32_t epoch);

/* psw_data_part_order writes to IDX (N entries) partition PART's sample
 * order in EPOCH: a permutation of 0..N-1 that depends only on (SEED,
 * EPOCH, PART), so that an offset into it names the same samples in every
 * worker (a partition handed over mid-epoch resumes where it was). */
void psw_data_part_order(uint32_t *idx, uint32_t n, uint64_t seed, uint32_t epoch,
                         uint32_t part);

#endif
