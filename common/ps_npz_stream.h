/* ps_npz_stream: an .npz written member by member, for arrays too large
 * to hold in memory (psctl export's embedding tables) and archives of 4
 * GiB or more.
 *
 * Same archive as ps_npz_write (ps_npz.h: stored members "NAME.npy", NPY
 * 1.0, data 64-byte aligned), except that:
 *   - a member's data is streamed in pieces, and the first dimension of
 *     its shape may be unknown until it ends: the NPY header is reserved
 *     at the size the largest first dimension needs and rewritten, padded
 *     with spaces, when the member ends; its CRC-32 is the header's
 *     combined with the data's (zlib crc32_combine);
 *   - the local header carries a 20-byte extra field that is a padding
 *     field (tag 0x5350, ignored by readers) unless the member reaches
 *     the zip64 threshold, when it is rewritten as the zip64 extra field
 *     (tag 1, both sizes) and the 32-bit sizes become 0xffffffff;
 *   - the central directory gives a size or offset at or above the
 *     threshold in a zip64 extra field (only those, in APPNOTE order),
 *     and the archive ends with the zip64 end of central directory record
 *     and its locator when any size, offset, the directory or the member
 *     count needs them.
 * The threshold is 0xffffffff (ps_npz_stream_set_zip64_at lowers it, for
 * tests).  Elements: float32 ('<f4') or uint64 ('<u8'), little-endian
 * hosts only.
 *
 * The file is written to the temporary file of PATH (ps_npz_tmp_open:
 * unnamed where the filesystem has O_TMPFILE, else "PATH.tmp.PID") and
 * put in PATH's place by ps_npz_stream_close after an fsync, so PATH is
 * the old file or the complete new one; any error (or
 * ps_npz_stream_abort) removes the temporary file.  Not thread-safe: one writer per stream. */
#ifndef PS_NPZ_STREAM_H
#define PS_NPZ_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"
#include "ps_npz.h"

typedef struct ps_npz_stream ps_npz_stream;

typedef enum ps_npz_dtype { PS_NPZ_F4 = 0, PS_NPZ_U8 = 1 } ps_npz_dtype;

/* ps_npz_stream_open creates the temporary file of PATH (with the mode
 * of the file PATH names when there is one: close replaces it).
 * PS_EINVAL (a path too long, a big-endian host), PS_EIO / PS_ENOSPC. */
int ps_npz_stream_open(ps_npz_stream **out, const char *path, ps_errbuf *eb);

/* ps_npz_stream_set_zip64_at: sizes and offsets at or above AT use
 * zip64 (tests; call before the first member). */
void ps_npz_stream_set_zip64_at(ps_npz_stream *z, uint64_t at);

/* ps_npz_stream_begin starts member NAME (1..1019 bytes, unique) of
 * DTYPE with NDIM (0..PS_NPZ_MAX_DIMS) dimensions SHAPE; SHAPE[0] is
 * decided by ps_npz_stream_end (the elements written over the product of
 * the others; a scalar takes one element).  PS_EINVAL (bad name, shape, a member still open), PS_EIO
 * / PS_ENOSPC. */
int ps_npz_stream_begin(ps_npz_stream *z, const char *name, ps_npz_dtype dtype, uint32_t ndim,
                        const uint64_t *shape, ps_errbuf *eb);

/* ps_npz_stream_write appends NELEMS elements of the open member's dtype
 * from DATA.  PS_EIO / PS_ENOSPC. */
int ps_npz_stream_write(ps_npz_stream *z, const void *data, uint64_t nelems, ps_errbuf *eb);

/* ps_npz_stream_end ends the open member: PS_EINVAL when the elements
 * written are not a whole number of rows of SHAPE[1..]. */
int ps_npz_stream_end(ps_npz_stream *z, ps_errbuf *eb);

/* ps_npz_stream_close writes the directory, syncs, renames the file over
 * PATH and frees Z (on error too, removing the temporary file).
 * PS_EINVAL when a member is still open; the error of a member that
 * failed once its local header was written (ps_npz_stream_begin,
 * _write or _end: its sizes and CRC are not known), as nothing valid can
 * be written then. */
int ps_npz_stream_close(ps_npz_stream *z, ps_errbuf *eb);

/* ps_npz_stream_abort removes the temporary file and frees Z (NULL-safe). */
void ps_npz_stream_abort(ps_npz_stream *z);

#endif
