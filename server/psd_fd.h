/* psd_fd: the process's file descriptors — the open-files limit and how
 * many are open.
 *
 * gRPC core, RocksDB and libuv all open descriptors and none of them can
 * wait for one: gRPC core 1.51 stops accepting on a listener for good
 * after one accept4 fails with EMFILE, and RocksDB fails the write or
 * flush that needed a file.  Of the descriptors' users only the tensor
 * channel can say no, so it refuses connections that would leave fewer
 * than psd_fd_reserve free for the others (psd_chan.h).  Thread-safe. */
#ifndef PSD_FD_H
#define PSD_FD_H

#include <stdint.h>

#include "ps_error.h"

/* Descriptors the channel leaves free for gRPC (a connection, a few
 * eventfds per poller) and RocksDB (a new table, WAL or MANIFEST file). */
#define PSD_FD_RESERVE 32

/* psd_fd_raise_limit raises the soft RLIMIT_NOFILE to the hard one (or to
 * fs.nr_open when the hard limit is unlimited); *BEFORE and *AFTER get the
 * soft limit before and after.  Returns 0 or PS_EIO with a message. */
int psd_fd_raise_limit(uint64_t *before, uint64_t *after, ps_errbuf *eb);

/* psd_fd_limit returns the soft RLIMIT_NOFILE (UINT64_MAX: unlimited). */
uint64_t psd_fd_limit(void);

/* psd_fd_reserve returns the reserve kept under LIMIT: PSD_FD_RESERVE, or
 * a quarter of LIMIT when that is less (a shard under a small limit still
 * serves some channel connections). */
uint64_t psd_fd_reserve(uint64_t limit);

/* psd_fd_count sets *N to the number of open descriptors (the entries of
 * /proc/self/fd; O(n)).  When not even one more can be opened to count
 * them, *N is psd_fd_limit().  Returns 0 or PS_EUNAVAIL (no /proc). */
int psd_fd_count(uint64_t *n);

#endif
