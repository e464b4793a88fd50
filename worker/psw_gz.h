/* psw_gz: reads a data file that is gzipped or plain, as its first two
 * bytes say (gzip's magic 1f 8b), for psw's IDX and CSV readers.
 *
 * Why not zlib's gzFile: it reads bytes after the end of a gzip stream
 * that are not another gzip member as the end of the file, so a file with
 * garbage appended (or one written over a longer one) loaded as if whole.
 * Here concatenated gzip members read as one stream, as zcat reads them,
 * and any other byte after the last member is an error.
 *
 * Errors: PS_EIO (cannot open or read) or PS_EFORMAT, messages starting
 * "PATH: ", a corrupt or cut-short stream as "PATH: byte N: truncated or
 * corrupt gzip file (WHY)" (N counts uncompressed bytes); PS_ENOMEM.
 *
 * Thread-safety: a psw_gz is used by one thread at a time. */
#ifndef PSW_GZ_H
#define PSW_GZ_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"

typedef struct psw_gz psw_gz;

/* psw_gz_open opens PATH (borrowed for the reader's lifetime) into *Z;
 * release with psw_gz_close. */
int psw_gz_open(psw_gz **z, const char *path, ps_errbuf *eb);

/* psw_gz_kind names the kind of file of st_mode MODE ("a FIFO", "a
 * directory", ...) for messages.  psw_gz_open refuses all but regular
 * files: a FIFO would block (and is read once only), a device such as
 * /dev/zero never ends. */
const char *psw_gz_kind(unsigned mode);

/* psw_gz_direct says whether Z reads a plain (not gzipped) file. */
int psw_gz_direct(const psw_gz *z);

/* psw_gz_read reads up to LEN bytes into BUF (NULL: skips them) and
 * stores how many in *GOT: fewer than LEN only at the end of the data.
 * Returns 0 or a PS_E* code (then *GOT bytes were read before it). */
int psw_gz_read(psw_gz *z, void *buf, size_t len, size_t *got, ps_errbuf *eb);

/* psw_gz_gets reads a line, up to and with its '\n', or CAP - 1 bytes
 * when it is longer, into BUF (CAP >= 2 bytes), NUL-terminated, and
 * stores its length in *LEN (0: the end of the data).  Returns as
 * psw_gz_read.  Reads and gets may be mixed. */
int psw_gz_gets(psw_gz *z, char *buf, size_t cap, size_t *len, ps_errbuf *eb);

/* psw_gz_close releases Z (NULL is a no-op). */
void psw_gz_close(psw_gz *z);

#endif
