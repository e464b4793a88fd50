/* psctl export, embedding tables: every row of every sparse table of a
 * model, paged from each shard with ExportRows, streamed into the .npz as
 * two members per table: "NAME.rows" (float32, [rows, dim]) and
 * "NAME.keys" (uint64, [rows]), row i of one the key i of the other.
 * Neither the table nor a shard's share of it is held in memory: rows go
 * to the archive page by page, keys to a temporary file beside it that is
 * copied in after the rows.  Keys come shard by shard, each shard's in
 * increasing order.  Checked on every page: the row width, the rows'
 * bytes, keys increasing and placed on the shard that sent them
 * (ps_place_row_map). */
#include "psctl_export_rows.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "graph.pb-c.h"
#include "ps_place.h"

#define PSCTL_ROWS_PAGE 65536

/* psctl_rows_shard pages shard I's rows of TABLE (DIM floats) into Z
 * (rows) and KF (keys); *N counts them.  Returns 0 or 1 after a message. */
static int psctl_rows_shard(psctl_cluster *c, size_t i, const char *model, uint32_t table,
                            uint32_t dim, const uint16_t *map, uint64_t seed, ps_npz_stream *z,
                            FILE *kf, uint64_t *n, int timeout_ms) {
  Ps__ExportRowsRequest req = PS__EXPORT_ROWS_REQUEST__INIT;
  req.model = (char *)model, req.table = table, req.limit = PSCTL_ROWS_PAGE;
  const ps_shard_conf *s = &c->cfg.shards[i];
  for (int done = 0; !done;) {
    ps_errbuf eb = {""};
    Ps__ExportRowsReply *rep = NULL;
    int err = ps_rpc_call(c->rpc[i], "/ps.Ps/ExportRows", &req.base,
                          &ps__export_rows_reply__descriptor, (ProtobufCMessage **)&rep,
                          timeout_ms, &eb);
    if (err) {
      fprintf(stderr, "psctl export: shard %" PRIu32 " (%s): rows of table %u: %s\n", s->id,
              s->grpc_addr, table, eb.msg[0] ? eb.msg : ps_strerror(err));
      return 1;
    }
    const char *bad = NULL;
    if (rep->dim != dim) bad = "another row width";
    else if (rep->rows.len != rep->n_keys * (size_t)dim * sizeof(float)) bad = "rows that disagree with its keys";
    for (size_t k = 0; !bad && k < rep->n_keys; k++)
      if ((req.resume || k) && rep->keys[k] <= (k ? rep->keys[k - 1] : req.after))
        bad = "keys out of order";
      else if (map[ps_place_row_bucket(seed, rep->keys[k])] != i)
        bad = "a key of another shard";
    if (bad) {
      fprintf(stderr, "psctl export: shard %" PRIu32 " sent %s for table %u\n", s->id, bad, table);
      protobuf_c_message_free_unpacked(&rep->base, NULL);
      return 1;
    }
    int rc = 0;
    if (rep->n_keys) {
      float *rows = malloc(rep->rows.len);
      if (!rows) rc = ps_errf(&eb, PS_ENOMEM, "out of memory");
      else memcpy(rows, rep->rows.data, rep->rows.len); /* float-aligned */
      if (!rc) rc = ps_npz_stream_write(z, rows, rep->n_keys * (uint64_t)dim, &eb);
      free(rows);
      if (!rc && fwrite(rep->keys, 8, rep->n_keys, kf) != rep->n_keys)
        rc = ps_errf(&eb, ps_err_from_errno(errno), "writing the keys: %s", strerror(errno));
      req.after = rep->keys[rep->n_keys - 1];
      req.resume = 1;
      *n += rep->n_keys;
    }
    done = rep->done || !rep->n_keys;
    protobuf_c_message_free_unpacked(&rep->base, NULL);
    if (rc) {
      fprintf(stderr, "psctl export: %s\n", eb.msg);
      return 1;
    }
  }
  return 0;
}

/* psctl_rows_table writes table T (parameter NAME, DIM) of MODEL. */
static int psctl_rows_table(psctl_cluster *c, const char *model, uint32_t t, const char *name,
                            uint32_t dim, ps_npz_stream *z, const char *path, int timeout_ms,
                            uint64_t *nrows) {
  size_t ns = c->cfg.nshards;
  uint32_t *ids = calloc(ns, sizeof *ids);
  uint16_t *map = malloc(PS_PLACE_ROW_BUCKETS * sizeof *map);
  char kpath[4200], member[600];
  snprintf(kpath, sizeof kpath, "%s.keys.%ld", path, (long)getpid());
  FILE *kf = ids && map ? fopen(kpath, "w+b") : NULL;
  int code = 1;
  ps_errbuf eb = {""};
  if (!kf) {
    fprintf(stderr, "psctl export: cannot create '%s': %s\n", kpath, strerror(errno));
    goto out;
  }
  unlink(kpath); /* read back through KF only: nothing is left if a signal ends psctl */
  ps_config_shard_ids(&c->cfg, ids);
  ps_place_row_map(model, t, ids, ns, map);
  uint64_t seed = ps_place_row_seed(model, t), shape[2] = {0, dim}, n = 0;
  snprintf(member, sizeof member, "%s.rows", name);
  if (ps_npz_stream_begin(z, member, PS_NPZ_F4, 2, shape, &eb) < 0) goto out_eb;
  for (size_t i = 0; i < ns; i++)
    if (psctl_rows_shard(c, i, model, t, dim, map, seed, z, kf, &n, timeout_ms)) goto out;
  if (ps_npz_stream_end(z, &eb) < 0) goto out_eb;
  snprintf(member, sizeof member, "%s.keys", name);
  if (ps_npz_stream_begin(z, member, PS_NPZ_U8, 1, shape, &eb) < 0) goto out_eb;
  rewind(kf);
  uint64_t buf[8192];
  size_t got;
  while ((got = fread(buf, 8, 8192, kf)) > 0)
    if (ps_npz_stream_write(z, buf, got, &eb) < 0) goto out_eb;
  if (ferror(kf)) {
    fprintf(stderr, "psctl export: reading '%s': %s\n", kpath, strerror(errno));
    goto out;
  }
  if (ps_npz_stream_end(z, &eb) < 0) goto out_eb;
  *nrows += n;
  code = 0;
  goto out;
out_eb:
  fprintf(stderr, "psctl export: %s\n", eb.msg);
out:
  if (kf) fclose(kf);
  free(ids);
  free(map);
  return code;
}

int psctl_export_rows(psctl_cluster *c, const Ps__ModelSpec *spec, ps_npz_stream *z,
                      const char *path, int timeout_ms, size_t *ntables, uint64_t *nrows) {
  *ntables = 0;
  *nrows = 0;
  if (!spec->graph.len) return 0;
  Ps__Graph__Graph *g = ps__graph__graph__unpack(NULL, spec->graph.len, spec->graph.data);
  if (!g) {
    fprintf(stderr, "psctl export: model '%s': its graph does not parse\n", spec->name);
    return 1;
  }
  int code = 0;
  for (size_t i = 0; i < g->n_params && !code; i++) {
    const Ps__Graph__Param *p = g->params[i];
    if (!p->sparse) continue;
    if (p->n_shape != 1 || !p->shape[0]) {
      fprintf(stderr, "psctl export: table '%s' has no [dim] shape\n", p->name);
      code = 1;
      break;
    }
    code = psctl_rows_table(c, spec->name, (uint32_t)i, p->name, p->shape[0], z, path,
                            timeout_ms, nrows);
    if (!code) (*ntables)++;
  }
  ps__graph__graph__free_unpacked(g, NULL);
  return code;
}

int psctl_export_has_rows(const Ps__ModelSpec *spec) {
  if (!spec->graph.len) return 0;
  Ps__Graph__Graph *g = ps__graph__graph__unpack(NULL, spec->graph.len, spec->graph.data);
  int any = 0;
  for (size_t i = 0; g && i < g->n_params; i++) any |= g->params[i]->sparse;
  if (g) ps__graph__graph__free_unpacked(g, NULL);
  return any;
}
