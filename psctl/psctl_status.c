/* psctl status: every shard's state, models, rates and storage, asked of
 * all shards at once. */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "ps.pb-c.h"
#include "ps_log.h"
#include "ps_pb.h"
#include "ps_auth.h"
#include "ps_rpc.h"
#include "ps_version.h"
#include "psctl.h"


/* ---- psctl status ---------------------------------------------------- */

#define PSCTL_STATUS_GAP_MS 500 /* between the two samples rates come from (--interval) */
#define PSCTL_STATUS_GAP_MIN_MS 100 /* shards count uptime in ms */
#define PSCTL_STATUS_BUSY_MS 1000   /* a log sync this long is shown in the text */
#define PSCTL_STATUS_GAP_MAX_MS 600000

typedef struct psctl_row {
  const ps_shard_conf *sc;
  const Ps__StatusReply *st;  /* NULL: DOWN or REFUSED */
  const char *why;            /* DOWN or REFUSED: the error */
  int err;                    /* ... and its code */
  uint64_t params, version;
  double push_rate, pull_rate; /* < 0: unknown */
  double flush_age_s;          /* < 0: never flushed */
  double sync_rate, per_sync;  /* redo log: syncs/s, pushes per sync; < 0: unknown */
  int mismatch;                /* st is not the shard the file says (psctl_mismatch) ... */
  char mismatch_why[512];      /* ... and how */
} psctl_row;

/* psctl_down_state names the state of a shard or aggregator whose Status
 * failed with ERR: REFUSED when it refused this client (its certificate's
 * role, or its handshake: psctl_explain), else DOWN. */
static const char *psctl_down_state(int err) { return err == PS_EPERM ? "REFUSED" : "DOWN"; }

/* psctl_explain makes the failure *ERR (message EB) of a Status to ADDR
 * a refusal (PS_EPERM) when the address takes TCP connections but closed
 * psctl's during the handshake (ps_rpc_explain_handshake): gRPC says
 * only "failed to connect", and DOWN sent the reader to a running shard's
 * network instead of to security.mode or the certificate. */
static void psctl_explain(const char *addr, int *err, ps_errbuf *eb, int timeout_ms) {
  if (*err < 0 && ps_rpc_explain_handshake(addr, *err, eb, timeout_ms)) *err = PS_EPERM;
}

/* psctl_row_state names R's state: DOWN or REFUSED, MISMATCH for a shard
 * that is not the one the file says (another cluster's, or another shard
 * list's), else the shard's own. */
static const char *psctl_row_state(const psctl_row *r) {
  return !r->st ? psctl_down_state(r->err) : r->mismatch ? "MISMATCH" : r->st->state;
}

/* psctl_status_row combines the two samples A (may have failed) and B of
 * shard SC into ROW. */
static void psctl_status_row(psctl_row *row, const ps_shard_conf *sc, const psctl_reply *a,
                             const psctl_reply *b, int64_t now_unix_ms) {
  memset(row, 0, sizeof *row);
  row->sc = sc;
  row->push_rate = row->pull_rate = row->flush_age_s = row->sync_rate = row->per_sync = -1;
  if (b->err < 0) {
    row->why = b->eb.msg;
    row->err = b->err;
    return;
  }
  const Ps__StatusReply *s = (const Ps__StatusReply *)b->resp;
  row->st = s;
  for (size_t i = 0; i < s->n_models; i++) {
    row->params += s->models[i]->params;
    if (s->models[i]->version > row->version) row->version = s->models[i]->version;
  }
  const Ps__StatusReply *p = a->err == 0 ? (const Ps__StatusReply *)a->resp : NULL;
  if (p && s->uptime_ms > p->uptime_ms) { /* (not across a restart: the uptime went back) */
    double dt = (double)(s->uptime_ms - p->uptime_ms) / 1e3;
    if (s->pushes >= p->pushes) {
      row->push_rate = (double)(s->pushes - p->pushes) / dt;
      row->pull_rate = (double)(s->pulls - p->pulls) / dt;
    }
    if (s->wal && s->wal_syncs >= p->wal_syncs && s->wal_records >= p->wal_records) {
      row->sync_rate = (double)(s->wal_syncs - p->wal_syncs) / dt;
      if (s->wal_syncs > p->wal_syncs)
        row->per_sync = (double)(s->wal_records - p->wal_records) / (double)(s->wal_syncs - p->wal_syncs);
    }
  }
  if (s->last_flush_unix_ms > 0)
    row->flush_age_s = (double)(now_unix_ms - s->last_flush_unix_ms) / 1e3;
}

/* psctl_human writes N bytes as "1.5M" style text into BUF. */
static const char *psctl_human(char *buf, size_t len, double n) {
  static const char units[] = "BKMGTP";
  int u = 0;
  while (n >= 1024 && u < 5) {
    n /= 1024;
    u++;
  }
  snprintf(buf, len, u ? "%.1f%c" : "%.0f%c", n, units[u]);
  return buf;
}

/* psctl_status_table prints the rows as an aligned table. */
static void psctl_status_table(const psctl_row *rows, size_t n) {
  printf("%-5s %-21s %-10s %6s %12s %9s %9s %9s %9s %9s %10s %9s\n", "SHARD", "ADDRESS", "STATE",
         "MODELS", "PARAMS", "VERSION", "PUSH/S", "PULL/S", "IN", "OUT", "FLUSHED", "DISK");
  for (size_t i = 0; i < n; i++) {
    const psctl_row *r = &rows[i];
    if (!r->st) {
      printf("%-5u %-21s %-10s %s\n", r->sc->id, r->sc->grpc_addr, psctl_down_state(r->err),
             r->why);
      continue;
    }
    char in[16], out[16], disk[16], age[24], pr[16], lr[16];
    if (r->flush_age_s < 0)
      snprintf(age, sizeof age, "never");
    else
      snprintf(age, sizeof age, "%.1fs ago", r->flush_age_s);
    snprintf(pr, sizeof pr, r->push_rate < 0 ? "-" : "%.1f", r->push_rate);
    snprintf(lr, sizeof lr, r->pull_rate < 0 ? "-" : "%.1f", r->pull_rate);
    /* a MISMATCH shard goes by the file's id, as its line below the table */
    printf("%-5u %-21s %-10s %6zu %12llu %9llu %9s %9s %9s %9s %10s %9s\n",
           r->mismatch ? r->sc->id : r->st->shard,
           r->sc->grpc_addr, psctl_row_state(r), r->st->n_models, (unsigned long long)r->params,
           (unsigned long long)r->version, pr, lr, psctl_human(in, sizeof in, (double)r->st->bytes_in),
           psctl_human(out, sizeof out, (double)r->st->bytes_out), age,
           psctl_human(disk, sizeof disk, (double)r->st->disk_bytes));
  }
}

/* psctl_status_conns prints why a shard is DEGRADED, and, for the shards
 * that refused or dropped
 * connections, rebuilt their gRPC server or refused callers who failed
 * authentication, those counts (nothing when none did: the table stays
 * as it was for a healthy cluster). */
static void psctl_status_conns(const psctl_row *rows, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (rows[i].mismatch)
      printf("shard %u is MISMATCH: %s: use the cluster's own file\n", rows[i].sc->id,
             rows[i].mismatch_why);
  for (size_t i = 0; i < n; i++)
    if (rows[i].st && rows[i].st->state_why && rows[i].st->state_why[0])
      printf("shard %u is %s: %s\n", rows[i].st->shard, rows[i].st->state, rows[i].st->state_why);
  for (size_t i = 0; i < n; i++) {
    const Ps__StatusReply *s = rows[i].st;
    if (!s || !(s->chan_refused || s->chan_idle_closed || s->chan_bad_frames ||
                s->chan_slow_closed || s->grpc_restarts))
      continue;
    printf("shard %u: channel %u open, %llu refused at accept, %llu closed idle, %llu closed "
           "for a frame out of the protocol, %llu closed as slow readers; "
           "grpc server rebuilt %llu times\n",
           s->shard, s->chan_connections, (unsigned long long)s->chan_refused,
           (unsigned long long)s->chan_idle_closed, (unsigned long long)s->chan_bad_frames,
           (unsigned long long)s->chan_slow_closed, (unsigned long long)s->grpc_restarts);
  }
  for (size_t i = 0; i < n; i++) {
    const Ps__StatusReply *s = rows[i].st;
    if (!s || !(s->auth_refused || s->chan_auth_refused)) continue;
    /* auth_refused: gRPC calls, and channel pushes of a sum from a
     * connection without an aggregator key; chan_auth_refused: connections
     * refused before their hello succeeded and, with the payload MAC,
     * frames */
    printf("shard %u (security %s): %llu requests refused for the caller's role (gRPC calls, "
           "channel pushes of a sum), %llu channel connections refused (a hello's key proof "
           "or form, a frame out of the protocol, or a frame's MAC)\n", s->shard,
           s->security ? s->security : "?",
           (unsigned long long)s->auth_refused, (unsigned long long)s->chan_auth_refused);
  }
}

/* psctl_status_wal prints, for the shards with a redo log (durability
 * sync), its size, syncs per second and pushes per sync over the sampling
 * gap, and what the start's replay did; for a shard without one that
 * replayed a log at its start (periodic after a sync run), that replay. */
static void psctl_status_wal(const psctl_row *rows, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const Ps__StatusReply *s = rows[i].st;
    if (s && !s->wal && s->replay)
      printf("shard %u: no redo log (durability periodic); start replayed %llu records in "
             "%llu ms (torn-tail records dropped: %llu) from a log an earlier sync run left\n",
             s->shard, (unsigned long long)s->replay_records, (unsigned long long)s->replay_ms,
             (unsigned long long)s->replay_dropped);
    if (!s || !s->wal) continue;
    char size[16], sr[16], ps[16];
    snprintf(sr, sizeof sr, rows[i].sync_rate < 0 ? "-" : "%.1f", rows[i].sync_rate);
    snprintf(ps, sizeof ps, rows[i].per_sync < 0 ? "-" : "%.1f", rows[i].per_sync);
    printf("shard %u: redo log %s, %s syncs/s, %s pushes per sync; start replayed %llu records "
           "in %llu ms (torn-tail records dropped: %llu)\n", s->shard,
           psctl_human(size, sizeof size, (double)s->wal_bytes), sr, ps,
           (unsigned long long)s->wal_replayed, (unsigned long long)s->wal_replay_ms,
           (unsigned long long)s->wal_replay_dropped);
    if (s->wal_busy_ms >= PSCTL_STATUS_BUSY_MS)
      printf("shard %u: the redo log's disk work in flight has run %.1f s (the disk is not "
             "answering?); pushes wait for it\n", s->shard, (double)s->wal_busy_ms / 1e3);
  }
}

/* A printer of one model row of shard S; HEADER: print the table's header first. */
typedef void psctl_model_row_fn(const Ps__StatusReply *s, const Ps__ModelStatus *m, int header);

/* psctl_status_each_model calls FN for every model of every shard that
 * answered, HEADER set for the first. */
static void psctl_status_each_model(const psctl_row *rows, size_t n, psctl_model_row_fn *fn) {
  int any = 0;
  for (size_t i = 0; i < n; i++) {
    const Ps__StatusReply *s = rows[i].st;
    for (size_t j = 0; s && j < s->n_models; j++) fn(s, s->models[j], !any++);
  }
}

/* psctl_status_model_row prints a model with its optimizer and learning
 * rate ("-" from a psd before them), its consistency: tau
 * histogram (buckets 0, 1, 2, 3-4, 5-8, 9-16, >16), the largest clock gap
 * a pull was served at, pulls parked now / ever / timed out. */
static void psctl_status_model_row(const Ps__StatusReply *s, const Ps__ModelStatus *m, int header) {
  if (header)
    printf("\n%-16s %-5s %-18s %-7s %-8s %-44s %6s %s\n", "MODEL", "SHARD", "OPTIMIZER LR",
           "CONSIST", "WEIGHT", "TAU 0/1/2/3-4/5-8/9-16/>16", "MAXGAP", "PARKED NOW/EVER/TIMEOUT");
  char mode[16], hist[128] = "-", opt[48] = "-";
  if (m->optimizer && *m->optimizer)
    snprintf(opt, sizeof opt, "%s %.6g", m->optimizer, (double)m->lr);
  if (!strcmp(m->consistency, "ssp"))
    snprintf(mode, sizeof mode, "ssp(%u)", m->staleness);
  else
    snprintf(mode, sizeof mode, "%s", m->consistency);
  size_t off = 0;
  for (size_t k = 0; k < m->n_tau_hist && off < sizeof hist; k++)
    off += (size_t)snprintf(hist + off, sizeof hist - off, "%s%llu", k ? "/" : "",
                            (unsigned long long)m->tau_hist[k]);
  printf("%-16s %-5u %-18s %-7s %-8s %-44s %6llu %llu/%llu/%llu\n", m->name, s->shard, opt, mode,
         m->staleness_weight, hist, (unsigned long long)m->max_gap,
         (unsigned long long)m->parked, (unsigned long long)m->pulls_parked,
         (unsigned long long)m->pull_timeouts);
}

/* psctl_status_codec_row prints a model with its push and pull codecs
 * and the tensor bytes pushed + pulled since the shard started: as fp32
 * (RAW), as sent (WIRE), and RAW / WIRE. */
static void psctl_status_codec_row(const Ps__StatusReply *s, const Ps__ModelStatus *m, int header) {
  if (header)
    printf("\n%-16s %-5s %-7s %-5s %14s %14s %7s\n", "MODEL", "SHARD", "CODEC", "PULL",
           "RAW_BYTES", "WIRE_BYTES", "SAVED");
  char saved[32] = "-";
  if (m->bytes_wire)
    snprintf(saved, sizeof saved, "%.2fx", (double)m->bytes_raw / (double)m->bytes_wire);
  printf("%-16s %-5u %-7s %-5s %14llu %14llu %7s", m->name, s->shard,
         *m->codec ? m->codec : "fp32", *m->pull_codec ? m->pull_codec : "fp32",
         (unsigned long long)m->bytes_raw, (unsigned long long)m->bytes_wire, saved);
  for (size_t k = 0; k < m->n_codec_tensors && k < m->n_tensor_codecs; k++)
    printf("%s%s=%s", k ? ", " : "  (tensors: ", m->codec_tensors[k], m->tensor_codecs[k]);
  printf("%s\n", m->n_codec_tensors && m->n_tensor_codecs ? ")" : "");
}

static void psctl_json_str(const char *s);

/* psctl_answered returns R's Status when the shard answered and is the
 * file's shard, else NULL. */
static const Ps__StatusReply *psctl_answered(const psctl_row *r) {
  return r->mismatch ? NULL : r->st;
}

/* psctl_holds says whether Status S lists model NAME. */
static int psctl_holds(const Ps__StatusReply *s, const char *name) {
  for (size_t m = 0; m < s->n_models; m++)
    if (!strcmp(s->models[m]->name, name)) return 1;
  return 0;
}

/* psctl_status_ids prints the ids of the shards that answered and hold
 * (HOLDS 1) or lack (0) model NAME, separated by SEP. */
static void psctl_status_ids(const psctl_row *rows, size_t n, const char *name, int holds,
                             const char *sep) {
  for (size_t k = 0, c = 0; k < n; k++)
    if (psctl_answered(&rows[k]) && psctl_holds(rows[k].st, name) == holds)
      printf("%s%u", c++ ? sep : "", rows[k].sc->id);
}

/* psctl_status_partial prints, for each model that some shards which
 * answered (and are the file's) hold and others lack, a line naming both
 * sets: workers cannot train it (a memory budget refused it on one, or a
 * submit stopped half-way).  JSON: the "partial_models" member, one
 * object per such model.  Returns the number of such models. */
static size_t psctl_status_partial(const psctl_row *rows, size_t n, int json) {
  size_t nbad = 0;
  if (json) printf(",\"partial_models\":[");
  for (size_t i = 0; i < n; i++) {
    const Ps__StatusReply *s = psctl_answered(&rows[i]);
    for (size_t j = 0; s && j < s->n_models; j++) {
      const char *name = s->models[j]->name;
      int seen = 0, lacks = 0; /* on a shard before i (said there); lacking on one */
      for (size_t k = 0; k < n; k++) {
        const Ps__StatusReply *t = psctl_answered(&rows[k]);
        if (t && psctl_holds(t, name)) seen |= k < i;
        else lacks |= t != NULL;
      }
      if (seen || !lacks) continue;
      if (json) {
        printf("%s{\"name\":", nbad ? "," : "");
        psctl_json_str(name);
        printf(",\"on\":[");
        psctl_status_ids(rows, n, name, 1, ",");
        printf("],\"missing\":[");
        psctl_status_ids(rows, n, name, 0, ",");
        printf("]}");
      } else {
        printf("model '%s' is on shards [", name);
        psctl_status_ids(rows, n, name, 1, ", ");
        printf("] and not on shards [");
        psctl_status_ids(rows, n, name, 0, ", ");
        printf("]: workers cannot train it; 'psctl submit' it again (its refusal says why a "
               "shard lacks it)\n");
      }
      nbad++;
    }
  }
  if (json) putchar(']');
  return nbad;
}

/* psctl_status_sparse prints each shard's sparse tables: rows in memory,
 * the hit rate of the keys asked for, rows evicted and read back, bytes
 * on disk (the shard's sparse RocksDB), keys counted toward admit_after
 * and the memory their counts take. */
static void psctl_status_sparse(const psctl_row *rows, size_t n) {
  int any = 0;
  char b[16], a[16];
  for (size_t i = 0; i < n; i++) {
    const Ps__StatusReply *s = rows[i].st;
    for (size_t j = 0; s && j < s->n_sparse_tables; j++) {
      const Ps__SparseTableStatus *t = s->sparse_tables[j];
      if (!any++)
        printf("\n%-16s %-5s %-5s %4s %10s %7s %10s %10s %10s %8s %10s %8s\n", "SPARSE TABLE",
               "INDEX", "SHARD", "DIM", "ROWS MEM", "HIT %", "EVICTED", "READ BACK", "CREATED",
               "DISK", "PENDING", "ADMIT");
      uint64_t asked = t->hits + t->misses;
      char hit[16] = "-";
      if (asked) snprintf(hit, sizeof hit, "%.1f", 100.0 * (double)t->hits / (double)asked);
      printf("%-16s %-5u %-5u %4u %10llu %7s %10llu %10llu %10llu %8s %10llu %8s\n", t->model,
             t->table, s->shard, t->dim, (unsigned long long)t->rows_mem, hit,
             (unsigned long long)t->evictions,
             (unsigned long long)(t->disk_reads + t->buffer_reads), (unsigned long long)t->created,
             psctl_human(b, sizeof b, (double)t->disk_bytes), (unsigned long long)t->pending,
             psctl_human(a, sizeof a, (double)t->admit_bytes));
    }
  }
}

/* psctl_worker_kind names how worker X holds its rank (KIND): it
 * registered (elastic, no --rank), it runs as a fixed psw --rank, or "-"
 * when the coordinator says neither (a fixed rank no longer live, a psd
 * older than WorkerInfo.registered and fixed_rank). */
static const char *psctl_worker_kind(const Ps__WorkerInfo *x) {
  return x->registered ? "registered" : x->fixed_rank ? "fixed" : "-";
}

/* psctl_status_workers prints the coordinator's worker table W (NULL:
 * the coordinator did not answer, WHY says why). */
static void psctl_status_workers(const Ps__ListWorkersReply *w, const char *why) {
  if (!w) {
    printf("\nworkers: the coordinator did not answer: %s\n", why);
    return;
  }
  if (!w->n_workers) return;
  printf("\nworkers (coordinator shard %u, %u expected):\n", w->shard, w->world_size);
  printf("%-4s %-20s %-7s %-5s %-10s %10s %10s %8s %8s %-12s %s\n", "RANK", "HOST", "PID",
         "STATE", "KIND", "CLOCK", "HEARTBEAT", "STEPS/S", "BLOCKED", "PARTITIONS", "DEVICE");
  for (size_t i = 0; i < w->n_workers; i++) {
    const Ps__WorkerInfo *x = w->workers[i];
    char age[24], parts[64] = "-";
    snprintf(age, sizeof age, "%.1fs ago", (double)x->heartbeat_age_ms / 1e3);
    if (x->n_partitions) ps_log_u32s(parts, sizeof parts, x->partitions, x->n_partitions);
    printf("%-4u %-20s %-7u %-5s %-10s %10llu %10s %8.2f %7.1f%% %-12s %s\n", x->rank, x->host,
           x->pid, x->state, psctl_worker_kind(x), (unsigned long long)x->clock, age, x->steps_per_s,
           100.0 * x->blocked_share, parts, x->device);
  }
}

/* psctl_status_parts prints the coordinator's partition table and the
 * samples trained per epoch against the data set's size (psd_clock.h
 * invariant 7). */
static void psctl_status_parts(const Ps__ListWorkersReply *w) {
  if (!w || !w->n_partitions) return;
  if (w->job_model && *w->job_model)
    printf("\npartitions of model '%s' (%u epoch%s claimed, data set %llu samples):\n",
           w->job_model, w->job_epochs, w->job_epochs == 1 ? "" : "s",
           (unsigned long long)w->data_size);
  else /* the table exists before a worker claims: no model, epochs or data set yet */
    printf("\npartitions (no worker has claimed one yet):\n");
  printf("%-9s %-6s %-6s %10s %10s %10s %s\n", "PARTITION", "OWNER", "EPOCH", "OFFSET",
         "IN FLIGHT", "SIZE", "STATE");
  for (size_t i = 0; i < w->n_partitions; i++) {
    const Ps__PartitionInfo *p = w->partitions[i];
    const Ps__PartProgress *q = p->pos;
    char owner[16] = "-";
    if (p->owned) snprintf(owner, sizeof owner, "%u", p->owner);
    int finished = w->job_epochs && q->epoch >= w->job_epochs;
    char size[24] = "-"; /* a partition's size is said by the worker that claims it */
    if (q->size) snprintf(size, sizeof size, "%llu", (unsigned long long)q->size);
    printf("%-9u %-6s %-6u %10llu %10llu %10s %s\n", q->partition, owner,
           finished ? w->job_epochs : q->epoch + 1,
           (unsigned long long)q->offset, (unsigned long long)(q->started - q->offset), size,
           finished ? "finished" : p->active ? "training" : p->owned ? "queued" : "waiting");
  }
  if (!w->n_epochs) return;
  printf("\n%-6s %12s %12s %10s %10s %s\n", "EPOCH", "TRAINED", "OF", "RETRAINED", "HANDOVERS",
         "PARTITIONS DONE");
  for (size_t i = 0; i < w->n_epochs; i++) {
    const Ps__EpochInfo *e = w->epochs[i];
    printf("%-6u %12llu %12llu %10llu %10u %u/%zu\n", e->epoch + 1,
           (unsigned long long)e->trained, (unsigned long long)w->data_size,
           (unsigned long long)e->retrained, e->handovers, e->done_parts, w->n_partitions);
  }
}

/* psctl_json_str prints S as a JSON string, valid whatever S holds: a
 * byte that does not start a valid UTF-8 sequence prints as U+FFFD (the
 * shards refuse such strings, but psctl may talk to an older one). */
static void psctl_json_str(const char *s) {
  putchar('"');
  while (s && *s) {
    unsigned char ch = (unsigned char)*s;
    size_t k = ch < 0x80 ? 1 : ch >= 0xf0 ? 4 : ch >= 0xe0 ? 3 : 2;
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch < 0x20 || ch == 0x7f)
      printf("\\u%04x", ch);
    else if (k > 1 && (strnlen(s, k) < k || !ps_utf8_valid(s, k)))
      printf("\\ufffd"), k = 1;
    else
      fwrite(s, 1, k, stdout);
    s += k;
  }
  putchar('"');
}

/* psctl_json_double: see psctl.h. */
const char *psctl_json_double(char buf[64], const char *fmt, double v) {
  if (!isfinite(v)) return "null";
  if (snprintf(buf, 64, fmt, v) >= 64) snprintf(buf, 64, "%.17g", v); /* never cut short */
  return buf;
}

/* psctl_json_num prints V, or null when it is negative (unknown). */
static void psctl_json_num(double v) {
  char b[64];
  fputs(v < 0 ? "null" : psctl_json_double(b, "%.3f", v), stdout);
}

/* psctl_build returns the build S reported (StatusReply.build), NULL for
 * none: S is NULL, or from a psd older than the field. */
static const char *psctl_build(const Ps__StatusReply *s) {
  return s && s->build && *s->build ? s->build : NULL;
}

/* psctl_json_build prints the "build" member of S's object: its build,
 * or null. */
static void psctl_json_build(const Ps__StatusReply *s) {
  printf(",\"build\":");
  if (psctl_build(s)) psctl_json_str(psctl_build(s));
  else printf("null");
}

/* The members of a shard's JSON object after "build" (psctl_status_json_row),
 * in order: a shard that did not answer has each of them null, so that a
 * script reading s["params"] gets None rather than a KeyError (README). */
static const char *const psctl_json_shard_keys[] = {
    "uptime_ms", "models", "params", "version", "pushes", "pulls", "pushes_per_s",
    "pulls_per_s", "bytes_in", "bytes_out", "errors", "last_flush_unix_ms", "last_flush_age_s",
    "disk_bytes", "chan_connections", "chan_refused", "chan_idle_closed", "chan_bad_frames",
    "chan_slow_closed", "grpc_restarts",
    "security", "auth_refused", "chan_auth_refused", "chan_shm_bytes", "chan_shm_connections",
    "redo_log", "start_replay", "sparse_tables"};

/* psctl_status_json_model prints model M's JSON object. */
static void psctl_status_json_model(const Ps__ModelStatus *m) {
  printf("{\"name\":");
  psctl_json_str(m->name);
  printf(",\"chunks\":%u,\"params\":%llu,\"version\":%llu,\"optimizer\":", m->chunks,
         (unsigned long long)m->params, (unsigned long long)m->version);
  if (m->optimizer && *m->optimizer) { /* a psd before the field sends none */
    psctl_json_str(m->optimizer);
    char b[64];
    printf(",\"lr\":%s", psctl_json_double(b, "%.7g", (double)m->lr)); /* a float: 7 digits */
  } else {
    printf("null,\"lr\":null");
  }
  printf(",\"consistency\":");
  psctl_json_str(m->consistency);
  printf(",\"staleness\":%u,\"staleness_weight\":", m->staleness);
  psctl_json_str(m->staleness_weight);
  printf(",\"tau_hist\":[");
  for (size_t k = 0; k < m->n_tau_hist; k++)
    printf("%s%llu", k ? "," : "", (unsigned long long)m->tau_hist[k]);
  printf("],\"max_gap\":%llu,\"parked\":%u,\"pulls_parked\":%llu,\"pull_timeouts\":%llu",
         (unsigned long long)m->max_gap, m->parked, (unsigned long long)m->pulls_parked,
         (unsigned long long)m->pull_timeouts);
  printf(",\"codec\":");
  psctl_json_str(*m->codec ? m->codec : "fp32");
  printf(",\"pull_codec\":");
  psctl_json_str(*m->pull_codec ? m->pull_codec : "fp32");
  printf(",\"tensor_codecs\":{");
  for (size_t k = 0; k < m->n_codec_tensors && k < m->n_tensor_codecs; k++) {
    if (k) putchar(',');
    psctl_json_str(m->codec_tensors[k]);
    putchar(':');
    psctl_json_str(m->tensor_codecs[k]);
  }
  printf("}");
  printf(",\"bytes_raw\":%llu,\"bytes_wire\":%llu}", (unsigned long long)m->bytes_raw,
         (unsigned long long)m->bytes_wire);
}

/* psctl_status_json_row prints one shard's JSON object: every member for
 * every shard, null where it did not answer. */
static void psctl_status_json_row(const psctl_row *r) {
  printf("{\"id\":%u,\"address\":", r->sc->id);
  psctl_json_str(r->sc->grpc_addr);
  printf(",\"channel\":");
  psctl_json_str(r->sc->channel_addr);
  printf(",\"state\":");
  psctl_json_str(psctl_row_state(r));
  printf(",\"state_why\":");
  psctl_json_str(r->st && r->st->state_why ? r->st->state_why : "");
  printf(",\"error\":");
  if (r->st) printf("null");
  else psctl_json_str(r->why);
  printf(",\"mismatch\":");
  if (r->mismatch) psctl_json_str(r->mismatch_why);
  else printf("null");
  psctl_json_build(r->st);
  if (!r->st) {
    for (size_t k = 0; k < sizeof psctl_json_shard_keys / sizeof *psctl_json_shard_keys; k++)
      printf(",\"%s\":null", psctl_json_shard_keys[k]);
    putchar('}');
    return;
  }
  const Ps__StatusReply *s = r->st;
  printf(",\"uptime_ms\":%llu,\"models\":[", (unsigned long long)s->uptime_ms);
  for (size_t i = 0; i < s->n_models; i++) {
    if (i) putchar(',');
    psctl_status_json_model(s->models[i]);
  }
  printf("],\"params\":%llu,\"version\":%llu,\"pushes\":%llu,\"pulls\":%llu,\"pushes_per_s\":",
         (unsigned long long)r->params, (unsigned long long)r->version,
         (unsigned long long)s->pushes, (unsigned long long)s->pulls);
  psctl_json_num(r->push_rate);
  printf(",\"pulls_per_s\":");
  psctl_json_num(r->pull_rate);
  printf(",\"bytes_in\":%llu,\"bytes_out\":%llu,\"errors\":%llu,\"last_flush_unix_ms\":%lld,"
         "\"last_flush_age_s\":",
         (unsigned long long)s->bytes_in, (unsigned long long)s->bytes_out,
         (unsigned long long)s->errors, (long long)s->last_flush_unix_ms);
  psctl_json_num(r->flush_age_s);
  printf(",\"disk_bytes\":%llu,\"chan_connections\":%u,\"chan_refused\":%llu,"
         "\"chan_idle_closed\":%llu,\"chan_bad_frames\":%llu,\"chan_slow_closed\":%llu,"
         "\"grpc_restarts\":%llu,\"security\":",
         (unsigned long long)s->disk_bytes, s->chan_connections,
         (unsigned long long)s->chan_refused, (unsigned long long)s->chan_idle_closed,
         (unsigned long long)s->chan_bad_frames, (unsigned long long)s->chan_slow_closed,
         (unsigned long long)s->grpc_restarts);
  psctl_json_str(s->security ? s->security : "");
  printf(",\"auth_refused\":%llu,\"chan_auth_refused\":%llu,\"chan_shm_bytes\":%llu,"
         "\"chan_shm_connections\":%u,\"redo_log\":",
         (unsigned long long)s->auth_refused, (unsigned long long)s->chan_auth_refused,
         (unsigned long long)s->chan_shm_bytes, s->chan_shm_connections);
  if (!s->wal) {
    printf("null");
  } else {
    printf("{\"bytes\":%llu,\"syncs\":%llu,\"records\":%llu,\"syncs_per_s\":",
           (unsigned long long)s->wal_bytes, (unsigned long long)s->wal_syncs,
           (unsigned long long)s->wal_records);
    psctl_json_num(r->sync_rate);
    printf(",\"pushes_per_sync\":");
    psctl_json_num(r->per_sync);
    printf(",\"replayed\":%llu,\"replay_dropped\":%llu,\"replay_ms\":%llu,\"busy_ms\":%llu}",
           (unsigned long long)s->wal_replayed, (unsigned long long)s->wal_replay_dropped,
           (unsigned long long)s->wal_replay_ms, (unsigned long long)s->wal_busy_ms);
  }
  printf(",\"start_replay\":");
  if (s->replay)
    printf("{\"replayed\":%llu,\"replay_dropped\":%llu,\"replay_ms\":%llu}",
           (unsigned long long)s->replay_records, (unsigned long long)s->replay_dropped,
           (unsigned long long)s->replay_ms);
  else
    printf("null");
  printf(",\"sparse_tables\":[");
  for (size_t j = 0; j < s->n_sparse_tables; j++) {
    const Ps__SparseTableStatus *t = s->sparse_tables[j];
    printf("%s{\"model\":", j ? "," : "");
    psctl_json_str(t->model);
    printf(",\"table\":%u,\"dim\":%u,\"rows_mem\":%llu,\"hits\":%llu,\"misses\":%llu,"
           "\"disk_reads\":%llu,\"disk_read_bytes\":%llu,\"created\":%llu,\"evictions\":%llu,"
           "\"disk_writes\":%llu,\"pending\":%llu,\"dropped_grads\":%llu,\"disk_bytes\":%llu,"
           "\"buffer_reads\":%llu,\"admit_bytes\":%llu}",
           t->table, t->dim, (unsigned long long)t->rows_mem, (unsigned long long)t->hits,
           (unsigned long long)t->misses, (unsigned long long)t->disk_reads,
           (unsigned long long)t->disk_read_bytes, (unsigned long long)t->created,
           (unsigned long long)t->evictions, (unsigned long long)t->disk_writes,
           (unsigned long long)t->pending, (unsigned long long)t->dropped_grads,
           (unsigned long long)t->disk_bytes, (unsigned long long)t->buffer_reads,
           (unsigned long long)t->admit_bytes);
  }
  printf("]}");
}

/* psctl_status_json_workers prints the "workers" member: the
 * coordinator's worker table, or null when it did not answer. */
static void psctl_status_json_workers(const Ps__ListWorkersReply *w) {
  printf(",\"workers\":");
  if (!w) {
    printf("null,\"job\":null");
    return;
  }
  putchar('[');
  for (size_t i = 0; i < w->n_workers; i++) {
    const Ps__WorkerInfo *x = w->workers[i];
    printf("%s{\"rank\":%u,\"host\":", i ? "," : "", x->rank);
    psctl_json_str(x->host);
    printf(",\"pid\":%u,\"state\":", x->pid);
    psctl_json_str(x->state);
    printf(",\"registered\":%s,\"fixed_rank\":%s", x->registered ? "true" : "false",
           x->fixed_rank ? "true" : "false");
    char sps[64], bs[64];
    printf(",\"clock\":%llu,\"heartbeat_age_ms\":%llu,\"steps_per_s\":%s,"
           "\"blocked_share\":%s,\"device\":",
           (unsigned long long)x->clock, (unsigned long long)x->heartbeat_age_ms,
           psctl_json_double(sps, "%.3f", (double)x->steps_per_s),
           psctl_json_double(bs, "%.4f", (double)x->blocked_share));
    psctl_json_str(x->device);
    printf(",\"model\":");
    psctl_json_str(x->model);
    printf(",\"partitions\":[");
    for (size_t k = 0; k < x->n_partitions; k++) printf("%s%u", k ? "," : "", x->partitions[k]);
    printf("]}");
  }
  putchar(']');
  if (!w->n_partitions) {
    printf(",\"job\":null");
    return;
  }
  printf(",\"job\":{\"model\":");
  if (w->job_model && *w->job_model) psctl_json_str(w->job_model);
  else printf("null");
  printf(",\"job_epochs\":%u,\"data_size\":%llu,\"partitions\":[", w->job_epochs,
         (unsigned long long)w->data_size);
  for (size_t i = 0; i < w->n_partitions; i++) {
    const Ps__PartitionInfo *p = w->partitions[i];
    printf("%s{\"partition\":%u,\"owner\":", i ? "," : "", p->pos->partition);
    if (p->owned) printf("%u", p->owner);
    else printf("null");
    printf(",\"epoch\":%u,\"offset\":%llu,\"started\":%llu,\"size\":%llu,\"active\":%s}",
           p->pos->epoch, (unsigned long long)p->pos->offset,
           (unsigned long long)p->pos->started, (unsigned long long)p->pos->size,
           p->active ? "true" : "false");
  }
  printf("],\"epochs\":[");
  for (size_t i = 0; i < w->n_epochs; i++) {
    const Ps__EpochInfo *e = w->epochs[i];
    printf("%s{\"epoch\":%u,\"trained\":%llu,\"retrained\":%llu,\"handovers\":%u,"
           "\"done_partitions\":%u}", i ? "," : "", e->epoch, (unsigned long long)e->trained,
           (unsigned long long)e->retrained, e->handovers, e->done_parts);
  }
  printf("]}");
}

/* ---- aggregators (DESIGN.md "Hierarchy") -------------------------------- */

/* One aggregator's two Status samples (NULL: it did not answer, WHY). */
typedef struct psctl_agg {
  const ps_config *cfg;
  const ps_agg_conf *g;
  Ps__StatusReply *a, *b;
  ps_errbuf why;
  int err;                    /* the last sample's failure */
} psctl_agg;

/* psctl_agg_sample asks aggregator X->g for its Status into *OUT (left
 * NULL when it does not answer within TIMEOUT_MS). */
static void psctl_agg_sample(psctl_agg *x, Ps__StatusReply **out, int timeout_ms) {
  ps_rpc *rpc = NULL;
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  *out = NULL;
  if ((x->err = ps_rpc_open_cfg(&rpc, x->g->grpc_addr, x->cfg, PS_ROLE_OPERATOR, &x->why)) < 0)
    return;
  if ((x->err = ps_rpc_call(rpc, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor,
                            (ProtobufCMessage **)out, timeout_ms, &x->why)) < 0)
    *out = NULL;
  ps_rpc_close(rpc);
}

/* psctl_agg_rates sets *FWD (sums forwarded per second, -1 unknown) and
 * *HIT (share of pulls answered without a fetch of their own, -1 none). */
static void psctl_agg_rates(const psctl_agg *x, double *fwd, double *hit) {
  const Ps__StatusReply *a = x->a, *b = x->b;
  *fwd = *hit = -1;
  if (!b) return;
  if (b->agg_pulls_in) *hit = (double)b->agg_pull_hits / (double)b->agg_pulls_in;
  if (a && b->uptime_ms > a->uptime_ms && b->agg_forwarded >= a->agg_forwarded)
    *fwd = (double)(b->agg_forwarded - a->agg_forwarded) * 1e3 / (double)(b->uptime_ms - a->uptime_ms);
}

/* psctl_status_aggs prints the tree's middle tier: each aggregator, its
 * counters and the workers that pushed or pulled through it within a lease. */
static void psctl_status_aggs(const psctl_agg *x, size_t n) {
  if (!n) return;
  printf("\naggregators:\n%-16s %-21s %-10s %8s %10s %10s %8s %8s %6s  %s\n", "NAME", "ADDRESS",
         "STATE", "FWD/S", "PUSHES_IN", "FORWARDED", "PULLS", "FETCHES", "HIT", "WORKERS");
  for (size_t i = 0; i < n; i++) {
    const Ps__StatusReply *b = x[i].b;
    if (!b) {
      printf("%-16s %-21s %-10s %s\n", x[i].g->name, x[i].g->grpc_addr,
             psctl_down_state(x[i].err), x[i].why.msg);
      continue;
    }
    double fwd, hit;
    psctl_agg_rates(&x[i], &fwd, &hit);
    char f[24] = "-", h[24] = "-", ws[256] = "-";
    if (fwd >= 0) snprintf(f, sizeof f, "%.1f", fwd);
    if (hit >= 0) snprintf(h, sizeof h, "%.0f%%", 100 * hit);
    if (b->n_agg_workers) ps_log_u32s(ws, sizeof ws, b->agg_workers, b->n_agg_workers);
    printf("%-16s %-21s %-10s %8s %10llu %10llu %8llu %8llu %6s  %s\n", x[i].g->name,
           x[i].g->grpc_addr, b->state, f, (unsigned long long)b->agg_pushes_in,
           (unsigned long long)b->agg_forwarded, (unsigned long long)b->agg_pulls_in,
           (unsigned long long)b->agg_fetches, h, ws);
  }
}

/* psctl_status_json_aggs prints the "aggregators" member. */
static void psctl_status_json_aggs(const psctl_agg *x, size_t n) {
  printf(",\"aggregators\":[");
  for (size_t i = 0; i < n; i++) {
    printf("%s{\"name\":", i ? "," : "");
    psctl_json_str(x[i].g->name);
    printf(",\"address\":");
    psctl_json_str(x[i].g->grpc_addr);
    const Ps__StatusReply *b = x[i].b;
    if (!b) {
      printf(",\"state\":\"%s\",\"error\":", psctl_down_state(x[i].err));
      psctl_json_str(x[i].why.msg);
      printf(",\"build\":null}");
      continue;
    }
    double fwd, hit;
    psctl_agg_rates(&x[i], &fwd, &hit);
    printf(",\"state\":");
    psctl_json_str(b->state);
    psctl_json_build(b);
    printf(",\"pushes_in\":%llu,\"forwarded\":%llu,\"pulls\":%llu,\"pull_hits\":%llu,"
           "\"fetches\":%llu,\"forwarded_per_s\":",
           (unsigned long long)b->agg_pushes_in, (unsigned long long)b->agg_forwarded,
           (unsigned long long)b->agg_pulls_in, (unsigned long long)b->agg_pull_hits,
           (unsigned long long)b->agg_fetches);
    psctl_json_num(fwd);
    printf(",\"hit_rate\":");
    psctl_json_num(hit);
    printf(",\"enters\":%llu,\"leaves\":%llu", (unsigned long long)b->agg_enters,
           (unsigned long long)b->agg_leaves);
    printf(",\"workers\":[");
    for (size_t k = 0; k < b->n_agg_workers; k++) printf("%s%u", k ? "," : "", b->agg_workers[k]);
    printf("]}");
  }
  putchar(']');
}

/* psctl_same_build: A and B are the same build (NULL: none reported). */
static int psctl_same_build(const char *a, const char *b) {
  return a && b ? !strcmp(a, b) : a == b;
}

/* psctl_status_builds prints, unless every shard and aggregator that
 * answered runs psctl's own build, the build each runs (shards of one
 * build on one line) and psctl's: README's compatibility notes are dated
 * by build, and a cluster upgraded half-way must show it. */
static void psctl_status_builds(const psctl_row *rows, size_t n, const psctl_agg *x, size_t naggs) {
  const char *me = ps_version();
  int differ = 0;
  for (size_t i = 0; i < n; i++)
    differ |= rows[i].st && !psctl_same_build(psctl_build(rows[i].st), me);
  for (size_t i = 0; i < naggs; i++) differ |= x[i].b && !psctl_same_build(psctl_build(x[i].b), me);
  if (!differ) return;
  for (size_t i = 0; i < n; i++) {
    const char *b = psctl_build(rows[i].st);
    size_t j = 0, k = 0;
    while (j < i && !(rows[j].st && psctl_same_build(psctl_build(rows[j].st), b))) j++;
    if (!rows[i].st || j < i) continue; /* did not answer, or on shard j's line */
    for (j = i; j < n; j++) k += rows[j].st && psctl_same_build(psctl_build(rows[j].st), b);
    printf("shard%s", k > 1 ? "s" : "");
    for (j = i, k = 0; j < n; j++)
      if (rows[j].st && psctl_same_build(psctl_build(rows[j].st), b))
        printf("%s %u", k++ ? "," : "", rows[j].st->shard);
    printf(" %s %s%s, psctl is %s\n", k > 1 ? "run" : "runs",
           b ? "psd " : "a psd too old to report its build", b ? b : "", me);
  }
  for (size_t i = 0; i < naggs; i++)
    if (x[i].b)
      printf("aggregator %s runs %s%s, psctl is %s\n", x[i].g->name,
             psctl_build(x[i].b) ? "psd " : "a psd too old to report its build",
             psctl_build(x[i].b) ? psctl_build(x[i].b) : "", me);
}

static const char psctl_status_usage[] =
    "usage: psctl status [--config FILE] [--json] [--timeout MS] [--interval MS]\n"
    "Asks every shard at once (deadline --timeout, default 2000 ms, per request: a shard\n"
    "that never answers costs up to three of them, the two samples and the workers' list) and\n"
    "prints one row per shard: id, address, state, models, parameters held, highest\n"
    "model version, pushes/s and pulls/s (from two Status samples taken --interval ms\n"
    "apart, default %d, %d..%d, by the shard's own uptime clock: a longer interval\n"
    "resolves low rates, such as the syncs/s of a quiet log; not waited when nothing\n"
    "answered the first sample), bytes in/out (tensor data since start), last flush age\n"
    "and size on disk (the store's files and, under durability sync, the redo log's).\n"
    "Under durability sync a line per shard adds the redo log's size, syncs/s and pushes\n"
    "per sync (same samples) and what the shard's start replayed from it, and a second\n"
    "line when its disk work in flight (a write + fdatasync) has run 1 s or more (the\n"
    "disk is not answering).  Under periodic a shard whose start replayed a log an earlier\n"
    "sync run left gets a line saying what that replay did.  A shard that fails the second\n"
    "sample after it answered the first (not by its deadline) is asked again on a new\n"
    "connection: it may have restarted (no rates).\n"
    "An unreachable shard shows DOWN, one that refuses psctl's certificate (its role) or\n"
    "closes psctl's connection during the TLS handshake (while its port takes TCP\n"
    "connections: a security.mode or a certificate it does not accept) REFUSED, saying\n"
    "what to check; one that is not the shard this file says (another cluster's name, id,\n"
    "shard count, or shard ids and chunk_elems; a psd too old to say: its id only)\n"
    "MISMATCH, with a line saying what it says it is.  Model rows name the optimizer and\n"
    "learning rate.  A model that some shards hold and others lack gets a line naming\n"
    "both.  Aggregators of the file (its 'aggregators' list) follow: sums forwarded per\n"
    "second, worker pushes summed, sums forwarded, pulls, root fetches, the share of pulls\n"
    "answered without a fetch of their own, and the workers that pushed or pulled through\n"
    "each within a lease.  The coordinator's workers follow, one row each: rank, host,\n"
    "pid, state, kind (registered: it registered without --rank; fixed: a psw --rank;\n"
    "-: neither said), clock, last heartbeat, steps/s, blocked share, partitions, device;\n"
    "then its partition table (owner, epoch, offset, in flight, size, state) when there\n"
    "is one.  A line names the build (psd --version) of each shard and aggregator unless\n"
    "all run psctl's own ('build' in --json, null when none was reported).  --json prints\n"
    "the same as one JSON object (\"partial_models\" for models on some shards only; every\n"
    "shard object has every member, null where it did not answer).\n"
    "--timeout-ms MS is the same as --timeout MS (psctl export's spelling).\n"
    "Short forms: -c FILE (--config), -j (--json), -h (--help).\n"
    "Exit status: 0 when every shard and every aggregator of the file is SERVING, 1\n"
    "otherwise (one DOWN, REFUSED, MISMATCH, DEGRADED or not yet serving, or a model on\n"
    "some shards only; a shard stopping on SIGTERM shows DOWN, its listeners closed at\n"
    "once), 2 for usage/config errors.\n";

static void psctl_status_usage_to(FILE *f) {
  fprintf(f, psctl_status_usage, PSCTL_STATUS_GAP_MS, PSCTL_STATUS_GAP_MIN_MS,
          PSCTL_STATUS_GAP_MAX_MS);
}

typedef struct psctl_status_opts {
  const char *config;
  int json, timeout_ms, interval_ms;
} psctl_status_opts;

/* psctl_status_args parses argv; 0, or an exit code (-1: --help). */
static int psctl_status_args(int argc, char **argv, psctl_status_opts *o) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"json", no_argument, 0, 'j'},
                                       {"timeout", required_argument, 0, 'T'},
                                       {"timeout-ms", required_argument, 0, 't'},
                                       {"interval", required_argument, 0, 'I'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  *o = (psctl_status_opts){NULL, 0, 2000, PSCTL_STATUS_GAP_MS};
  optind = 1;
  int c;
  uint64_t v;
  while ((c = getopt_long(argc, argv, "c:jh", opts, NULL)) != -1) {
    switch (c) {
      case 'c': o->config = optarg; break;
      case 'j': o->json = 1; break;
      case 'T':
      case 't':
        if (psctl_parse_u64("status", c == 'T' ? "timeout" : "timeout-ms", optarg, 1, INT_MAX,
                            &v) < 0)
          return 2;
        o->timeout_ms = (int)v;
        break;
      case 'I':
        if (psctl_parse_u64("status", "interval", optarg, PSCTL_STATUS_GAP_MIN_MS,
                            PSCTL_STATUS_GAP_MAX_MS, &v) < 0)
          return 2;
        o->interval_ms = (int)v;
        break;
      case 'h': psctl_status_usage_to(stdout); return -1;
      default: fputs("see 'psctl status --help'\n", stderr); return 2;
    }
  }
  if (optind < argc || o->timeout_ms <= 0) {
    if (optind < argc) fprintf(stderr, "psctl status: unexpected argument '%s'\n", argv[optind]);
    fputs("see 'psctl status --help'\n", stderr);
    return 2;
  }
  return 0;
}

/* psctl_status_again asks once more, all at once on new channels, each
 * shard of C that answered the first sample (A) but not the second (B)
 * for a reason other than its deadline: it may have restarted in between,
 * and its old channel then fails on the broken connection ("Socket
 * closed") instead of reaching the new process.  The first sample of a
 * shard asked again is dropped: no rates across a restart. */
static void psctl_status_again(psctl_cluster *c, const Ps__StatusRequest *req, psctl_reply *a,
                               psctl_reply *b, int timeout_ms) {
  size_t n = c->cfg.nshards, k = 0;
  size_t *idx = calloc(n, sizeof *idx);
  ps_rpc **rpc = calloc(n, sizeof *rpc);
  psctl_reply *out = calloc(n, sizeof *out);
  for (size_t i = 0; idx && rpc && out && i < n; i++) {
    ps_errbuf eb;
    if (a[i].err < 0 || b[i].err == 0 || b[i].err == PS_ETIMEDOUT ||
        ps_rpc_open_cfg(&rpc[k], c->cfg.shards[i].grpc_addr, &c->cfg, PS_ROLE_OPERATOR, &eb) < 0)
      continue;
    ps_rpc_close(c->rpc[i]);
    c->rpc[i] = rpc[k];
    idx[k++] = i;
  }
  if (k) ps_rpc_call_all(rpc, k, "/ps.Ps/Status", &req->base, &ps__status_reply__descriptor,
                         timeout_ms, out);
  for (size_t j = 0; j < k; j++) {
    psctl_replies_free(&a[idx[j]], 1);
    a[idx[j]].err = PS_EUNAVAIL;
    psctl_replies_free(&b[idx[j]], 1);
    b[idx[j]] = out[j];
  }
  free(idx);
  free(rpc);
  free(out);
}

/* psctl_status_main: see psctl.h; 0 when every shard serves, else 1. */
int psctl_status_main(int argc, char **argv) {
  psctl_status_opts o;
  int code = psctl_status_args(argc, argv, &o);
  if (code) return code < 0 ? 0 : code;
  psctl_cluster c;
  ps_errbuf eb = {{0}};
  if (psctl_cluster_open(&c, o.config, &eb) < 0) {
    fprintf(stderr, "psctl status: %s\n", eb.msg);
    return 2;
  }
  size_t n = c.cfg.nshards;
  psctl_reply *a = calloc(n, sizeof *a), *b = calloc(n, sizeof *b);
  psctl_row *rows = calloc(n, sizeof *rows);
  size_t naggs = c.cfg.naggs;
  psctl_agg *aggs = calloc(naggs + 1, sizeof *aggs);
  Ps__StatusRequest req = PS__STATUS_REQUEST__INIT;
  code = 1;
  if (!a || !b || !rows || !aggs) goto out;
  psctl_call_all(&c, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor, o.timeout_ms, a);
  int answered = 0; /* the interval is waited only when something answered */
  for (size_t i = 0; i < n; i++) answered |= a[i].err == 0;
  for (size_t i = 0; i < naggs; i++) {
    aggs[i].cfg = &c.cfg;
    aggs[i].g = &c.cfg.aggs[i];
    psctl_agg_sample(&aggs[i], &aggs[i].a, o.timeout_ms);
    answered |= aggs[i].a != NULL;
  }
  struct timespec gap = {o.interval_ms / 1000, o.interval_ms % 1000 * 1000000L};
  if (answered) nanosleep(&gap, NULL);
  psctl_call_all(&c, "/ps.Ps/Status", &req.base, &ps__status_reply__descriptor, o.timeout_ms, b);
  psctl_status_again(&c, &req, a, b, o.timeout_ms);
  for (size_t i = 0; i < naggs; i++) {
    psctl_agg_sample(&aggs[i], &aggs[i].b, o.timeout_ms);
    if (!aggs[i].b) psctl_explain(aggs[i].g->grpc_addr, &aggs[i].err, &aggs[i].why, o.timeout_ms);
  }
  for (size_t i = 0; i < n; i++)
    psctl_explain(c.cfg.shards[i].grpc_addr, &b[i].err, &b[i].eb, o.timeout_ms);
  struct timeval tv;
  gettimeofday(&tv, NULL);
  int64_t now = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
  Ps__ListWorkersRequest lreq = PS__LIST_WORKERS_REQUEST__INIT;
  Ps__ListWorkersReply *workers = NULL;
  ps_errbuf leb = {{0}};
  size_t coord = (size_t)(ps_config_coordinator(&c.cfg) - c.cfg.shards);
  if (ps_rpc_call(c.rpc[coord], "/ps.Ps/ListWorkers", &lreq.base,
                  &ps__list_workers_reply__descriptor, (ProtobufCMessage **)&workers,
                  o.timeout_ms, &leb) < 0)
    workers = NULL;
  size_t serving = 0, aggs_serving = 0, partial = 0;
  for (size_t i = 0; i < n; i++) {
    psctl_status_row(&rows[i], &c.cfg.shards[i], &a[i], &b[i], now);
    rows[i].mismatch = rows[i].st && psctl_mismatch(&c, i, rows[i].st, rows[i].mismatch_why,
                                                    sizeof rows[i].mismatch_why);
    if (!strcmp(psctl_row_state(&rows[i]), "SERVING")) serving++;
  }
  /* a dead or hung aggregator fails its workers over to the roots: a
   * monitoring script must see it in the exit status too */
  for (size_t i = 0; i < naggs; i++)
    if (aggs[i].b && !strcmp(aggs[i].b->state, "SERVING")) aggs_serving++;
  if (o.json) {
    printf("{\"cluster\":");
    psctl_json_str(c.cfg.cluster);
    printf(",\"serving\":%zu,\"total\":%zu,\"shards\":[", serving, n);
    for (size_t i = 0; i < n; i++) {
      if (i) putchar(',');
      psctl_status_json_row(&rows[i]);
    }
    putchar(']');
    partial = psctl_status_partial(rows, n, 1);
    psctl_status_json_workers(workers);
    psctl_status_json_aggs(aggs, naggs);
    printf("}\n");
  } else {
    psctl_status_table(rows, n);
    psctl_status_builds(rows, n, aggs, naggs);
    psctl_status_conns(rows, n);
    psctl_status_wal(rows, n);
    partial = psctl_status_partial(rows, n, 0);
    psctl_status_each_model(rows, n, psctl_status_model_row);
    psctl_status_each_model(rows, n, psctl_status_codec_row);
    psctl_status_sparse(rows, n);
    psctl_status_workers(workers, leb.msg);
    psctl_status_parts(workers);
    psctl_status_aggs(aggs, naggs);
  }
  if (workers) protobuf_c_message_free_unpacked(&workers->base, NULL);
  code = serving == n && aggs_serving == naggs && !partial ? 0 : 1;
out:
  if (a) psctl_replies_free(a, n);
  if (b) psctl_replies_free(b, n);
  for (size_t i = 0; aggs && i < naggs; i++) {
    if (aggs[i].a) protobuf_c_message_free_unpacked(&aggs[i].a->base, NULL);
    if (aggs[i].b) protobuf_c_message_free_unpacked(&aggs[i].b->base, NULL);
  }
  free(aggs);
  free(a);
  free(b);
  free(rows);
  psctl_cluster_close(&c);
  return code;
}
