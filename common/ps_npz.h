/* ps_npz: NumPy .npz files of float32 arrays (write, and read back).
 *
 * An .npz is a zip archive of stored (uncompressed) members "NAME.npy".
 * Each member is NPY format 1.0: "\x93NUMPY", version 1.0, a
 * little-endian u16 header length, a Python dict literal such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (256, 10), }
 * padded with spaces and a newline so the data starts 64-byte aligned,
 * then the data, float32 little-endian, C order.  Archives of 4 GiB or
 * more (which need zip64) are refused.  numpy.load reads what
 * ps_npz_write writes; ps_npz_read reads those files and numpy.savez's
 * uncompressed ones (float32 only).
 *
 * Thread-safety: no global state; different files from different threads. */
#ifndef PS_NPZ_H
#define PS_NPZ_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "ps_error.h"

#define PS_NPZ_MAX_DIMS 8

/* One array to write; everything borrowed for the call. */
typedef struct ps_npz_array {
  const char *name;       /* member name without ".npy"; non-empty, unique */
  uint32_t ndim;          /* 0 (a scalar) .. PS_NPZ_MAX_DIMS */
  const uint64_t *shape;  /* ndim entries */
  const float *data;      /* product of shape elements, C order */
} ps_npz_array;

/* ps_npz_write writes the N arrays to PATH atomically: a temporary file
 * next to it (ps_npz_tmp_open), fsync, then rename over PATH, so PATH is
 * either the old file or the complete new one.  Returns 0, PS_EINVAL (bad
 * name, shape), PS_ETOOBIG (4 GiB or more, or 65535 members), PS_EIO /
 * PS_ENOSPC (writing), with a message in EB; on error no file is left. */
int ps_npz_write(const char *path, const ps_npz_array *arrays, size_t n, ps_errbuf *eb);

/* ps_npz_tmp_open creates the temporary file of PATH, for a writer that
 * puts it in PATH's place with ps_npz_tmp_commit; its name, "PATH.tmp.PID",
 * goes to TMP (CAP bytes).  Where PATH's filesystem has O_TMPFILE the
 * file has no name until the commit, so a process killed before it
 * (SIGKILL included) leaves nothing; elsewhere it is made at that name
 * at once (O_EXCL: a link left at that name is not followed) and only
 * the writer's own cleanup removes it.  It has the mode of the file PATH
 * names when there is one.  0 with *OUT, or PS_EINVAL (too long) / the
 * create's error, said in EB. */
int ps_npz_tmp_open(const char *path, char *tmp, size_t cap, FILE **out, ps_errbuf *eb);

/* ps_npz_tmp_commit puts the temporary file F of ps_npz_tmp_open (TMP
 * its name), written, flushed and synced, in PATH's place: it gets its
 * name TMP if it has none (linkat, never over a link left there), then is
 * renamed over PATH.  Call before fclose(F).  0, or the error said in EB,
 * TMP removed. */
int ps_npz_tmp_commit(FILE *f, const char *tmp, const char *path, ps_errbuf *eb);

/* One array read back; owned by its ps_npz. */
typedef struct ps_npz_entry {
  char *name;             /* without ".npy" */
  uint32_t ndim;
  uint64_t shape[PS_NPZ_MAX_DIMS];
  uint64_t nelems;
  float *data;            /* nelems floats in host order */
} ps_npz_entry;

typedef struct ps_npz {
  size_t n;
  ps_npz_entry *entries;  /* in archive order */
} ps_npz;

/* ps_npz_read reads every member of the .npz at PATH into *Z (zeroed
 * first; release with ps_npz_release).  Checks the zip structure, CRC-32,
 * the NPY header and the data length.  Returns 0, PS_EIO (cannot read),
 * PS_EFORMAT ("PATH: member 'w.npy': ..."), PS_ENOTSUP (compressed
 * members, dtypes other than '<f4', fortran order), PS_ENOMEM. */
int ps_npz_read(ps_npz *z, const char *path, ps_errbuf *eb);

/* ps_npz_find returns the entry named NAME (without ".npy") or NULL;
 * borrowed from Z. */
const ps_npz_entry *ps_npz_find(const ps_npz *z, const char *name);

/* ps_npz_release frees Z's entries and zeroes it; idempotent. */
void ps_npz_release(ps_npz *z);

#endif
