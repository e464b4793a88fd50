/* psctl export of embedding tables (psctl_export_rows.c). */
#ifndef PSCTL_EXPORT_ROWS_H
#define PSCTL_EXPORT_ROWS_H

#include <stddef.h>
#include <stdint.h>

#include "ps.pb-c.h"
#include "ps_npz_stream.h"
#include "psctl.h"

/* psctl_export_has_rows: 1 when SPEC's graph has an embedding table. */
int psctl_export_has_rows(const Ps__ModelSpec *spec);

/* psctl_export_rows writes every embedding table of SPEC from the shards
 * of C into Z as "NAME.rows" and "NAME.keys" (a temporary keys file
 * beside PATH while a table is written); *NTABLES and *NROWS count what
 * it wrote.  Returns 0, or 1 after a message on stderr (the caller then
 * aborts Z). */
int psctl_export_rows(psctl_cluster *c, const Ps__ModelSpec *spec, ps_npz_stream *z,
                      const char *path, int timeout_ms, size_t *ntables, uint64_t *nrows);

#endif
