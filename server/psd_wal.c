/* psd_wal: the redo log of `durability: sync` (see psd_wal.h).
 *
 * Buffers: the loop checksums a record from the caller's bytes (which
 * its own checks have just read: in its cache, where the writer thread
 * would read them from memory) outside the mutex, then appends it to
 * `pend` under the mutex; the writer takes a group out of it into
 * `wbuf` (swapping the two buffers when all of `pend` fits in one group,
 * so the usual case copies nothing more), adds the group's end mark,
 * writes it at the synced end of the current segment with pwrite, and
 * fdatasyncs.  A record's piece in a
 * block the caller handed over (psd_wal_append_own, invariant 8) is not
 * copied: `pend` and `wbuf` hold a hole of its size (never read; a split
 * group's copy leaves it out), and a list of wal_ext (pext, wext) says
 * where it lies; such a group is laid out in `zbuf` around the pieces
 * (wal_lay) and written with one pwritev.  Only the writer thread touches the files after
 * psd_wal_start; only the loop touches the waiter list. */
#include "psd_wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "ps_crc32c.h"
#include "ps_log.h"
#include "ps_time.h"

#define WAL_HDR 16
#define WAL_CRC32C 0x80000000u /* in a record's len field: its crc is CRC-32C */
#define WAL_MAX_RECORD (0x7fffffffu - 64)
#define WAL_SPARES 8 /* deleted segments kept for reuse (invariant 6) */
#define WAL_ALIGN 4096 /* O_DIRECT: buffers, offsets and lengths (psd_wal.h, invariant 7) */

/* wal_ext: record bytes the log took by reference (psd_wal_append_own's
 * OWN, invariant 8): LEN bytes at SRC (WAL_ALIGN-aligned), inside the
 * malloc'd block BUF of CAP bytes, belong at offset OFF of a buffer's
 * records, where the buffer holds only a hole for them; the writer writes
 * them from SRC and gives BUF back once their group is synced.  A lent
 * block (LEND set, BUF NULL) is released to its lender instead. */
typedef struct wal_ext {
  size_t off, len, cap;
  uint64_t seq;            /* of the record the piece belongs to */
  const uint8_t *src;
  void *buf;
  const ps_lend *lend;
} wal_ext;

/* wal_exts: a list of them. */
typedef struct wal_exts {
  wal_ext *v;
  size_t n, cap;
} wal_exts;

#define WAL_POOL 4 /* taken blocks kept to give back (psd_wal_append_own) */
#define WAL_ZC_MIN 65536 /* smaller pieces are copied even when offered (invariant 8) */
#define WAL_SKIP_SEQ UINT64_MAX /* a skip record's seq (invariant 8) */
#define WAL_SKIP_MAX 8192 /* a skip record is shorter (invariant 8) */
/* a group's end mark (invariant 5): a skip record whose payload is the
 * magic, the segment's first seq, where the group starts in the segment,
 * and its first record's seq */
#define WAL_MARK_LEN 32
#define WAL_MARK_MAGIC 0x70756f7267647370ull /* "psdgroup", little-endian */

typedef struct wal_seg {
  uint64_t first;  /* seq of its first record (its name) */
  uint64_t last;   /* seq of its last record; 0: empty */
  uint64_t bytes;
} wal_seg;

struct psd_wal {
  psd_wal_opts o;
  char *dir;
  int dirfd;
  wal_seg *segs;           /* oldest first; the last is the current one */
  size_t nsegs, segcap;
  int fd;                  /* the current segment (writer thread after start) */
  uint64_t fsize;          /* its file's size: beyond its records when reused */
  int direct;              /* fd is O_DIRECT (invariant 7); 0 after a refusal */
  int pad_end;             /* the file ends with the last direct write's padding */
  uint8_t blk[WAL_ALIGN];  /* direct: the current segment's last partial block */
  uint64_t spare[WAL_SPARES]; /* reusable files, named by their old first seq */
  size_t nspare;
  /* shared with the writer, under mu */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_cond_t synced_cv;  /* broadcast when a group ends (psd_wal_wait_synced) */
  uint8_t *pend;           /* aligned; records from pend + pend_base */
  size_t pend_len, pend_cap, pend_base;
  wal_exts pext;           /* pend's bytes still in taken blocks */
  wal_exts done;           /* taken blocks whose group synced (wal_give) */
  uint64_t pend_nrec;
  uint64_t synced_seq;
  uint64_t trunc_seq;      /* a finished snapshot holds records up to here */
  int trunc_pending;
  int drop_pending;        /* psd_wal_drop_spares asked */
  int stop;
  int failed, err_code, changed;
  int low;                 /* short of space (invariant 9) */
  int cap_said;            /* the reserve's cap was said to fall short */
  uint64_t reserve;        /* psd_wal_set_reserve */
  char low_msg[300];
  uint64_t lent_seq;       /* failing: the first record with a piece still lent
                            * (wal_unlend found no memory); it and later ones
                            * wait for their answer.  UINT64_MAX: none */
  char err_msg[300];
  uint64_t syncs, records, bytes;
  uint64_t write_ns, sync_ns;  /* time the writer spent in pwrite / fdatasync */
  uint64_t wait_warned_ns;     /* psd_wal_wait_synced's last warning (0: none) */
  uint64_t busy_since_ns;      /* when the writer's disk work in flight (a write + sync,
                                * spares dropped, a segment cut or made) began (0: none) */
  uint64_t bytes_written;      /* by groups that synced */
  uint64_t zc_records;         /* of which records written from a taken block (invariant 8) */
  uint64_t lent_records;       /* ... of those from a lent one */
  /* writer thread */
  uint8_t *wbuf;           /* aligned; records from wbuf + wbase */
  size_t wlen, wcap, wbase;
  wal_exts wext;           /* wbuf's bytes still in taken blocks */
  uint8_t *zbuf;           /* aligned; a group with taken blocks is laid out here */
  size_t zcap;
  struct iovec *ziov;      /* the pieces of the group's write */
  size_t nziov, ziovcap;
  const uint8_t *zend;     /* in memory: the end of the group's last bytes (invariant 7) */
  size_t wfile;            /* the group's bytes in the segment (skip records included) */
  uint64_t wlast, wnrec;
  int wsealed;             /* wbuf's group ends in its end mark (wal_seal) */
  int retrying;
  pthread_t thread;
  /* loop thread */
  uint64_t next_seq;
  uv_async_t async;
  int started, stopped;
  psd_wal_waiter *head, *tail;
  int loop_failed;         /* the state on_state last said: 0 works, 1 short, 2 failing */
  char loop_msg[300 + 160]; /* and its message (err_msg or low_msg, 300, and more) */
  int writer_done;         /* the writer thread ended (under mu) */
  uint64_t replayed, dropped, replay_ms, replay_last, skipped;
  int scan_cut;            /* the replay's search for intact records ended early */
  int refused;             /* the replay refused the log's records (psd_wal_stats) */
  uint64_t loop_ns, loop_max_ns; /* the loop's time inside the log's calls */
  uint64_t lock_ns, lock_max_ns; /* of which waiting for the writer's mutex */
};

static uint64_t wal_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* wal_loop_lock takes the mutex on the loop thread, counting how long it
 * waited for the writer; returns the time it started. */
static uint64_t wal_loop_lock(psd_wal *w) {
  uint64_t t0 = wal_now_ns();
  if (pthread_mutex_trylock(&w->mu) != 0) {
    pthread_mutex_lock(&w->mu);
    uint64_t d = wal_now_ns() - t0;
    w->lock_ns += d;
    if (d > w->lock_max_ns) w->lock_max_ns = d;
  }
  return t0;
}

/* wal_loop_time adds the loop's time since T0 (its time in the log). */
static void wal_loop_time(psd_wal *w, uint64_t t0) {
  uint64_t d = wal_now_ns() - t0;
  w->loop_ns += d;
  if (d > w->loop_max_ns) w->loop_max_ns = d;
}

/* ---- encoding and files ---------------------------------------------------- */

static uint32_t wal_get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t wal_get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* wal_len: a record's payload length (its len field without the flag). */
static uint32_t wal_len(const uint8_t *hdr) { return wal_get32(hdr) & ~WAL_CRC32C; }

/* wal_crc returns the checksum of a record: its len and seq fields (HDR)
 * and its payload P.  CRC-32C when the len field carries WAL_CRC32C (every
 * record this version writes), else zlib's CRC-32 (logs written before
 * it, which replay as they are). */
static uint32_t wal_crc(const uint8_t *hdr, const uint8_t *p, size_t len) {
  if (wal_get32(hdr) & WAL_CRC32C) {
    uint32_t c = ps_crc32c(0, hdr, 4);
    c = ps_crc32c(c, hdr + 8, 8);
    return ps_crc32c(c, p, len);
  }
  uLong c = crc32(0L, Z_NULL, 0);
  c = crc32(c, hdr, 4);
  c = crc32(c, hdr + 8, 8);
  return (uint32_t)crc32_z(c, p, len);
}

/* wal_group_max: the most bytes of records one group takes, leaving room
 * for its end mark in group_commit_max_bytes (invariants 2 and 5). */
static uint64_t wal_group_max(const psd_wal *w) {
  uint64_t mark = WAL_HDR + WAL_MARK_LEN, lim = w->o.max_batch_bytes;
  return lim > mark ? lim - mark : 1;
}

static int wal_code(int e) { return e == ENOSPC || e == EDQUOT ? PS_ENOSPC : PS_EIO; }

/* wal_grow replaces *BUF (*CAP bytes) by an aligned buffer (invariant 7) of
 * at least NEED bytes holding its first KEEP bytes.  0 or -1. */
static int wal_grow(uint8_t **buf, size_t *cap, size_t keep, size_t need) {
  size_t c = *cap ? *cap : 65536;
  while (c < need) c *= 2;
  void *p;
  if (posix_memalign(&p, WAL_ALIGN, c) != 0) return -1;
  if (keep) memcpy(p, *buf, keep);
  free(*buf);
  *buf = p;
  *cap = c;
  return 0;
}

/* wal_give puts taken block B (CAP bytes), its group written and synced,
 * on the list of blocks to give back (invariant 8), which has room for
 * every block the log holds (psd_wal_append_own sees to it).  Only the
 * loop thread takes blocks off it, to give one to psd_wal_append_own's
 * caller or to free it: the caller may still read the block on the loop
 * thread after handing it over (a push is applied from it after it is
 * logged), so the writer neither frees nor writes one.  Under mu. */
static void wal_give(psd_wal *w, const wal_ext *x) {
  if (x->lend) x->lend->release(x->lend->arg);
  else w->done.v[w->done.n++] = (wal_ext){.buf = x->buf, .cap = x->cap};
}

/* wal_unlend copies the lent pieces of list X into blocks of the log's
 * own (given back as taken blocks are) and releases them to their
 * lenders: a push whose sync failed is answered (PS_EDEGRADED), after
 * which its lender may change its bytes, while the log still has to
 * write them (invariant 8).  A piece that finds no memory stays lent,
 * with a warning, and its push is not answered until a later attempt
 * copies it or a retry syncs it.  Returns the seq of the first piece
 * still lent, UINT64_MAX when none is.  Under mu. */
static uint64_t wal_unlend(psd_wal *w, wal_exts *x) {
  uint64_t first = UINT64_MAX;
  for (size_t i = 0; i < x->n; i++) {
    wal_ext *e = &x->v[i];
    void *p;
    if (!e->lend) continue;
    size_t cap = (e->len + WAL_ALIGN - 1) & ~(size_t)(WAL_ALIGN - 1);
    if ((w->o.copy_alloc ? w->o.copy_alloc(&p, cap, w->o.sync_arg)
                         : posix_memalign(&p, WAL_ALIGN, cap)) != 0) {
      ps_warn("redo log: no memory to copy a push's gradients out of its client's shared "
              "memory; the log keeps writing them from there, and the push waits for its "
              "answer until the disk or the memory is back");
      if (e->seq < first) first = e->seq;
      continue;
    }
    memcpy(p, e->src, e->len);
    const ps_lend *l = e->lend;
    *e = (wal_ext){.off = e->off, .len = e->len, .cap = cap, .seq = e->seq, .src = p, .buf = p};
    l->release(l->arg);
  }
  return first;
}

/* wal_move copies the LEN bytes of records at SRC to DST (memmove: DST
 * may overlap before SRC), leaving out the holes of the N taken pieces X
 * whose offsets, less BASE, fall inside. */
static void wal_move(uint8_t *dst, const uint8_t *src, size_t len, const wal_ext *x, size_t n,
                     size_t base) {
  size_t at = 0;
  for (size_t i = 0; i < n && x[i].off - base < len; i++) {
    size_t o = x[i].off - base;
    memmove(dst + at, src + at, o - at);
    at = o + x[i].len;
  }
  if (at < len) memmove(dst + at, src + at, len - at);
}

/* wal_exts_room makes room for N entries in list X (at least doubling
 * it); 0 or -1 (ENOMEM, X unchanged). */
static int wal_exts_room(wal_exts *x, size_t n) {
  if (n <= x->cap) return 0;
  size_t c = n > 2 * x->cap ? n : 2 * x->cap;
  if (c < 16) c = 16;
  wal_ext *v = realloc(x->v, c * sizeof *v);
  if (!v) return -1;
  x->v = v;
  x->cap = c;
  return 0;
}

/* wal_exts_free frees the blocks list X still holds, and the list. */
static void wal_exts_free(wal_exts *x) {
  for (size_t i = 0; i < x->n; i++) {
    if (x->v[i].lend) x->v[i].lend->release(x->v[i].lend->arg);
    else free(x->v[i].buf);
  }
  free(x->v);
  *x = (wal_exts){0};
}

/* wal_refused: the filesystem refuses O_DIRECT (some tmpfs versions,
 * network or FUSE filesystems), in an open or a write (WHAT): buffered
 * writes from now on (invariant 7). */
static void wal_refused(psd_wal *w, const char *what, int e) {
  w->direct = 0;
  ps_info("redo log '%s': the filesystem refuses O_DIRECT %s (%s); buffered writes from now on",
          w->dir, what, strerror(e));
}

/* wal_open_file opens segment NAME for writing (FLAGS: O_CREAT and
 * O_TRUNC or none), O_DIRECT while the log uses it.  Writer thread. */
static int wal_open_file(psd_wal *w, const char *name, int flags) {
  flags |= O_WRONLY | O_CLOEXEC;
  int fd = openat(w->dirfd, name, flags | (w->direct ? O_DIRECT : 0), 0644);
  if (fd < 0 && w->direct && errno == EINVAL) {
    wal_refused(w, "opens", errno);
    fd = openat(w->dirfd, name, flags, 0644);
  }
  return fd;
}

static void wal_seg_name(char *buf, size_t n, uint64_t first) {
  snprintf(buf, n, "%016" PRIx64 ".log", first);
}

/* wal_spare_name: a deleted segment kept for reuse (invariant 6). */
static void wal_spare_name(char *buf, size_t n, uint64_t first) {
  snprintf(buf, n, "%016" PRIx64 ".free", first);
}

/* wal_named: whether NAME has the shape of a segment's name (SUFFIX
 * ".log") or a spare's (".free"): 16 characters, then SUFFIX. */
static int wal_named(const char *name, const char *suffix) {
  return strlen(name) == 16 + strlen(suffix) && !strcmp(name + 16, suffix);
}

/* wal_unlink_spares removes the spare files (invariant 6), unsynced. */
static void wal_unlink_spares(psd_wal *w) {
  for (size_t i = 0; i < w->nspare; i++) {
    char sp[32];
    wal_spare_name(sp, sizeof sp, w->spare[i]);
    unlinkat(w->dirfd, sp, 0);
  }
  w->nspare = 0;
}

/* wal_seg_add appends a segment entry; 0 or PS_ENOMEM. */
static int wal_seg_add(psd_wal *w, uint64_t first, uint64_t last, uint64_t bytes) {
  if (w->nsegs == w->segcap) {
    size_t cap = w->segcap ? 2 * w->segcap : 8;
    wal_seg *v = realloc(w->segs, cap * sizeof *v);
    if (!v) return PS_ENOMEM;
    w->segs = v;
    w->segcap = cap;
  }
  w->segs[w->nsegs++] = (wal_seg){first, last, bytes};
  return 0;
}

static int wal_seg_cmp(const void *a, const void *b) {
  uint64_t x = ((const wal_seg *)a)->first, y = ((const wal_seg *)b)->first;
  return x < y ? -1 : x > y;
}

/* wal_scan lists DIR's segments, oldest first. */
static int wal_scan(psd_wal *w, ps_errbuf *eb) {
  int fd = dup(w->dirfd);
  DIR *d = fd < 0 ? NULL : fdopendir(fd);
  if (!d) {
    int e = errno;
    if (fd >= 0) close(fd);
    return ps_errf(eb, PS_EIO, "cannot list '%s': %s", w->dir, strerror(e));
  }
  struct dirent *e;
  int rc = 0;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    char *end;
    if (wal_named(e->d_name, ".free")) { /* a spare */
      uint64_t id = strtoull(e->d_name, &end, 16);
      if (end != e->d_name + 16) continue;
      if (w->nspare < WAL_SPARES) w->spare[w->nspare++] = id;
      else unlinkat(w->dirfd, e->d_name, 0);
      continue;
    }
    size_t nl = strlen(e->d_name);
    int dotlog = nl > 4 && !strcmp(e->d_name + nl - 4, ".log");
    if (!dotlog) {
      /* what psd writes there: id (id.tmp while it is made); "." and ".." */
      if (strcmp(e->d_name, "id") && strcmp(e->d_name, "id.tmp") && e->d_name[0] != '.')
        ps_warn("redo log '%s': '%s' is no file of the log: ignored", w->dir, e->d_name);
      continue;
    }
    uint64_t first = strtoull(e->d_name, &end, 16);
    if (!wal_named(e->d_name, ".log") || end != e->d_name + 16) {
      /* a segment renamed by hand may hold acknowledged records: not
       * skipped without a word */
      rc = ps_errf(eb, PS_EIO, "redo log '%s': '%s' is no segment name (16 hex digits, the "
                   "first record's seq, then .log): rename it back or move it away", w->dir,
                   e->d_name);
      continue;
    }
    struct stat st;
    if (fstatat(w->dirfd, e->d_name, &st, 0) < 0)
      rc = ps_errf(eb, PS_EIO, "cannot stat '%s/%s': %s", w->dir, e->d_name, strerror(errno));
    else if (!S_ISREG(st.st_mode)) /* read as a segment, its "records" blamed the one before */
      rc = ps_errf(eb, PS_EIO, "redo log '%s': '%s' is not a regular file (a segment's name "
                   "on a directory or other entry): remove it or move it away", w->dir,
                   e->d_name);
    else if (wal_seg_add(w, first, 0, (uint64_t)st.st_size) < 0)
      rc = ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  closedir(d);
  if (rc == 0 && w->nsegs) qsort(w->segs, w->nsegs, sizeof *w->segs, wal_seg_cmp);
  return rc;
}

/* psd_wal_open: see psd_wal.h. */
int psd_wal_open(psd_wal **out, const psd_wal_opts *o, ps_errbuf *eb) {
  *out = NULL;
  if (!o->dir || !o->max_batch_bytes) return ps_errf(eb, PS_EINVAL, "bad log options");
  psd_wal *w = calloc(1, sizeof *w);
  if (!w || !(w->dir = strdup(o->dir))) {
    free(w);
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  }
  w->o = *o;
  w->o.dir = w->dir;
  if (!w->o.retry_ms) w->o.retry_ms = 1000;
  w->reserve = o->reserve_bytes;
  if (!w->o.segment_bytes) w->o.segment_bytes = 64u << 20;
  w->fd = w->dirfd = -1;
  w->direct = !o->buffered;
  w->next_seq = 1;
  w->lent_seq = UINT64_MAX;
  pthread_mutex_init(&w->mu, NULL);
  /* the writer's timed waits (wal_wait_more, wal_sleep) count on the
   * monotonic clock: a condition on the default (realtime) clock read
   * their deadlines as long past, so neither waited at all */
  ps_cond_init_mono(&w->cv);
  ps_cond_init_mono(&w->synced_cv); /* psd_wal_wait_synced's timed waits */
  /* One level: the log lives inside the store's directory, which exists. */
  int rc = 0;
  if (mkdir(o->dir, 0755) < 0 && errno != EEXIST)
    rc = ps_errf(eb, wal_code(errno), "cannot create '%s': %s", o->dir, strerror(errno));
  if (rc == 0 && (w->dirfd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
    rc = ps_errf(eb, PS_EIO, "cannot open '%s': %s", o->dir, strerror(errno));
  if (rc == 0) rc = wal_scan(w, eb);
  if (rc < 0) {
    psd_wal_free(w);
    return rc;
  }
  *out = w;
  return 0;
}

/* psd_wal_has_records: see psd_wal.h. */
int psd_wal_has_records(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d)) != NULL) {
    struct stat st;
    if ((wal_named(e->d_name, ".log") && fstatat(dirfd(d), e->d_name, &st, 0) == 0 &&
         st.st_size > 0) ||
        wal_named(e->d_name, ".free"))
      found = 1;
  }
  closedir(d);
  return found;
}

#define WAL_ID_FMT "psd redo log %016" PRIx64 "\n"

/* psd_wal_id: see psd_wal.h. */
int psd_wal_id(psd_wal *w, uint64_t *id, ps_errbuf *eb) {
  *id = 0;
  int fd = openat(w->dirfd, "id", O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* (a FIFO: no hang) */
  if (fd < 0 && errno == ENOENT) return 0;
  if (fd < 0) return ps_errf(eb, PS_EIO, "cannot open '%s/id': %s", w->dir, strerror(errno));
  char b[64] = "";
  ssize_t n = read(fd, b, sizeof b - 1);
  close(fd);
  char end;
  /* its newline may be missing (a file written by hand, an editor) */
  size_t want = strlen("psd redo log ") + 16;
  int got = n < 0 ? 0 : sscanf(b, "psd redo log %16" SCNx64 "%c", id, &end);
  if (n < 0 || (got == 2 && (end != '\n' || (size_t)n != want + 1)) ||
      (got == 1 && (size_t)n != want) || got < 1 || !*id) {
    *id = 0;
    return ps_errf(eb, PS_EIO, "'%s/id' is not a redo log id (\"psd redo log\" and 16 hex digits)",
                   w->dir);
  }
  return 0;
}

/* psd_wal_nonempty: see psd_wal.h. */
int psd_wal_nonempty(const psd_wal *w) {
  for (size_t i = 0; i < w->nsegs; i++)
    if (w->segs[i].bytes) return 1;
  return 0;
}

/* psd_wal_dir: see psd_wal.h. */
const char *psd_wal_dir(const psd_wal *w) { return w->dir; }

/* psd_wal_set_id: see psd_wal.h. */
int psd_wal_set_id(psd_wal *w, uint64_t id, ps_errbuf *eb) {
  char b[64];
  int n = snprintf(b, sizeof b, WAL_ID_FMT, id);
  int fd = openat(w->dirfd, "id.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int rc = fd < 0 || write(fd, b, (size_t)n) != n || fdatasync(fd) < 0 ? -1 : 0;
  int e = errno;
  if (fd >= 0) close(fd);
  if (rc == 0 && renameat(w->dirfd, "id.tmp", w->dirfd, "id") < 0) rc = -1, e = errno;
  if (rc == 0 && fsync(w->dirfd) < 0) rc = -1, e = errno;
  if (rc < 0) {
    unlinkat(w->dirfd, "id.tmp", 0);
    return ps_errf(eb, wal_code(e), "cannot write '%s/id': %s", w->dir, strerror(e));
  }
  return 0;
}

/* ---- replay ------------------------------------------------------------------ */

/* wal_read_seg reads segment I whole into *BUF (caller frees). */
static int wal_read_seg(psd_wal *w, size_t i, uint8_t **buf, size_t *len, ps_errbuf *eb) {
  char name[32];
  wal_seg_name(name, sizeof name, w->segs[i].first);
  int fd = openat(w->dirfd, name, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* (a FIFO: no hang) */
  if (fd < 0) return ps_errf(eb, PS_EIO, "cannot open '%s/%s': %s", w->dir, name, strerror(errno));
  struct stat st;
  int rc = fstat(fd, &st) < 0 ? ps_errf(eb, PS_EIO, "cannot stat '%s/%s'", w->dir, name) : 0;
  size_t n = rc == 0 ? (size_t)st.st_size : 0, got = 0;
  *buf = rc == 0 ? malloc(n ? n : 1) : NULL;
  if (rc == 0 && !*buf) rc = ps_errf(eb, PS_ENOMEM, "out of memory reading '%s/%s'", w->dir, name);
  while (rc == 0 && got < n) {
    ssize_t r = read(fd, *buf + got, n - got);
    if (r <= 0) rc = ps_errf(eb, PS_EIO, "cannot read '%s/%s': %s", w->dir, name,
                             r < 0 ? strerror(errno) : "short file");
    else got += (size_t)r;
  }
  close(fd);
  if (rc < 0) {
    free(*buf);
    *buf = NULL;
  }
  *len = n;
  return rc;
}

/* wal_check returns NULL when a whole, intact record starts at P (N bytes
 * left), else why not. */
static const char *wal_check(const uint8_t *p, size_t n) {
  if (n < WAL_HDR) return "short header";
  uint32_t len = wal_len(p);
  if (len > n - WAL_HDR) return "short record";
  if (wal_crc(p, p + WAL_HDR, len) != wal_get32(p + 4)) return "checksum mismatch";
  return NULL;
}

/* wal_starts_ok: whether segment I starts with an intact record of the seq
 * its name gives, i.e. a roll to it completed and its first write reached
 * the file (a spare renamed by a roll that failed, left by a crash, holds
 * older records: invariant 6).  Reads that record only; 0 on any error. */
static int wal_starts_ok(psd_wal *w, size_t i) {
  char name[32];
  wal_seg_name(name, sizeof name, w->segs[i].first);
  int fd = openat(w->dirfd, name, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* (a FIFO: no hang) */
  uint8_t h[WAL_HDR], *rec = NULL;
  int ok = fd >= 0 && pread(fd, h, WAL_HDR, 0) == WAL_HDR && wal_get64(h + 8) == w->segs[i].first;
  size_t n = ok ? WAL_HDR + (size_t)wal_len(h) : 0; /* the record, header and payload */
  ok = ok && n <= w->segs[i].bytes && (rec = malloc(n)) != NULL &&
       pread(fd, rec, n, 0) == (ssize_t)n && !wal_check(rec, n);
  free(rec);
  if (fd >= 0) close(fd);
  return ok;
}

/* wal_zeros: whether the N bytes at P are all zero. */
static int wal_zeros(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

/* wal_may_follow: whether the bytes of segment BUF (N bytes) at offset AT
 * may follow an intact record of seq SEQ (a skip record: SEQ is
 * WAL_SKIP_SEQ, and what follows is a record of NEXT or later, within
 * WINDOW of it): the file's end, zeros to the end of the 4 KiB block or
 * for a header's length (a direct write's padding, a block never
 * written), the next record's header or a skip record's.  A cheap test
 * before a checksum: bytes that only happen to hold a plausible seq (an
 * older record's payload) seldom pass both.  A record of ours that it
 * refuses is the last one before a reused file's older bytes. */
static int wal_may_follow(const uint8_t *buf, size_t n, size_t at, uint64_t seq, uint64_t next,
                          uint64_t window) {
  size_t pad = at % WAL_ALIGN ? WAL_ALIGN - at % WAL_ALIGN : WAL_HDR;
  if (pad > n - at) pad = n - at;
  if (wal_zeros(buf + at, pad)) return 1;
  if (n - at < WAL_HDR) return 0;
  uint64_t s = wal_get64(buf + at + 8);
  if (s == WAL_SKIP_SEQ) return 1;
  return seq == WAL_SKIP_SEQ ? s >= next && s - next <= window : s == seq + 1;
}

/* wal_mark: whether the intact skip record at P (LEN payload bytes) is a
 * group's end mark (invariant 5) of the segment starting at FIRST; then
 * *START is where its group starts in the segment. */
static int wal_mark(const uint8_t *p, uint32_t len, uint64_t first, uint64_t *start) {
  if (len != WAL_MARK_LEN || wal_get64(p + WAL_HDR) != WAL_MARK_MAGIC ||
      wal_get64(p + WAL_HDR + 8) != first)
    return 0;
  *start = wal_get64(p + WAL_HDR + 16);
  return 1;
}

/* wal_found: what wal_count_after found after a bad record. */
typedef struct wal_found {
  uint64_t n;        /* intact records of ours (skip records not counted) */
  size_t end;        /* where the last of them ends (0: none) */
  size_t first_at;   /* where the first of them starts */
  uint64_t first_seq;
  uint64_t last_seq; /* the highest seq of them */
  int cut;           /* the search ended early (its budget) */
  size_t cut_at;     /* where (when cut) */
  int later;         /* a group after the bad record's was written (end marks) */
} wal_found;

/* wal_found_cut notes in F that the search stopped at AT. */
static void wal_found_cut(wal_found *f, size_t at) {
  if (!f->cut) f->cut_at = at;
  f->cut = 1;
}

/* The search after a bad record (wal_count_after) checks a candidate's
 * checksum from the checksums of the segment's prefixes: the bytes after
 * the bad record are hashed once, in steps of WAL_PFX_STEP, per checksum
 * kind (made at the first candidate of that kind longer than
 * WAL_PFX_MIN), and a candidate of any length then costs at most about
 * 2 WAL_PFX_STEP bytes and two ps_crc32c_combine / crc32_combine calls.
 * (A reused file's older pushes hold many candidates: a float's top half
 * followed by a zero float, a ReLU's dead unit, reads as a seq of 12k to
 * 49k, with a length field up to the file's end from the float before;
 * checked byte by byte, a few of them ate any budget within a megabyte
 * of the bad record.) */
#define WAL_PFX_STEP 1024
#define WAL_PFX_MIN (2 * WAL_PFX_STEP)

typedef struct wal_pfx {
  uint32_t *c; /* c[k]: the checksum of the bytes from the base, k steps */
  size_t nc;
  int tried;   /* made, or its memory was refused */
} wal_pfx;

/* wal_pfx_sum extends checksum C (CRC-32C when C32, else zlib's) by N
 * bytes at P. */
static uint32_t wal_pfx_sum(int c32, uint32_t c, const uint8_t *p, size_t n) {
  return c32 ? ps_crc32c(c, p, n) : (uint32_t)crc32_z(c, p, n);
}

/* wal_pfx_shift: checksum C followed by N zero-checksum bytes' effect,
 * i.e. combine(C, 0, N). */
static uint32_t wal_pfx_shift(int c32, uint32_t c, size_t n) {
  return c32 ? ps_crc32c_combine(c, 0, n) : (uint32_t)crc32_combine(c, 0, (z_off_t)n);
}

/* wal_pfx_at: the checksum of BUF's bytes from BASE to X (made tables). */
static uint32_t wal_pfx_at(const wal_pfx *pf, int c32, const uint8_t *buf, size_t base, size_t x) {
  size_t k = (x - base) / WAL_PFX_STEP;
  if (k >= pf->nc) k = pf->nc - 1;
  size_t from = base + k * WAL_PFX_STEP;
  return wal_pfx_sum(c32, pf->c[k], buf + from, x - from);
}

/* wal_count_check: wal_check for the candidate at AT of BUF (N bytes),
 * through PF[2] (the prefix checksums from BASE, per kind) when it is
 * long; adds the bytes it hashes to *COST. */
static const char *wal_count_check(const uint8_t *buf, size_t n, size_t base, size_t at,
                                   wal_pfx pf[2], uint64_t *cost) {
  uint32_t len = wal_len(buf + at); /* the caller saw it fit */
  int c32 = (wal_get32(buf + at) & WAL_CRC32C) != 0;
  wal_pfx *p = &pf[c32];
  if (len > WAL_PFX_MIN && !p->tried) {
    p->tried = 1;
    p->nc = (n - base) / WAL_PFX_STEP + 1;
    p->c = malloc(p->nc * sizeof *p->c);
    if (p->c) {
      uint32_t c = 0;
      for (size_t k = 0; k < p->nc; k++) {
        p->c[k] = c;
        size_t from = base + k * WAL_PFX_STEP;
        if (k + 1 < p->nc) c = wal_pfx_sum(c32, c, buf + from, WAL_PFX_STEP);
      }
      *cost += n - base;
    }
  }
  if (len <= WAL_PFX_MIN || !p->c) {
    *cost += len;
    return wal_check(buf + at, n - at);
  }
  size_t a = at + WAL_HDR, b = a + len;
  uint32_t ca = wal_pfx_at(p, c32, buf, base, a), cb = wal_pfx_at(p, c32, buf, base, b);
  uint32_t payload = cb ^ wal_pfx_shift(c32, ca, len); /* of the bytes from A to B */
  uint32_t h = wal_pfx_sum(c32, 0, buf + at, 4);
  h = wal_pfx_sum(c32, h, buf + at + 8, 8);
  *cost += 2 * WAL_PFX_STEP + 256; /* and the combines' products */
  uint32_t sum = c32 ? ps_crc32c_combine(h, payload, len)
                     : (uint32_t)crc32_combine(h, payload, (z_off_t)len);
  return sum == wal_get32(buf + at + 4) ? NULL : "checksum mismatch";
}

/* wal_count_after looks for the intact records of this log after a bad
 * one at offset OFF of segment BUF (N bytes), into F: records whose seq
 * is NEXT (the bad record's, when it is ours) or later, found at any byte
 * offset, for the bad record's own length field may be what is damaged
 * (a walk from the end it claims finds nothing then); skip records
 * (invariant 8) are stepped over, not counted.  A candidate at offset AT
 * holds at most seq NEXT + (AT - OFF) / WAL_HDR (none is shorter than its
 * header; a reused file's older records hold seqs below NEXT), a skip
 * record under 8 KiB.  Its checksum is computed when it sits right after
 * a record found (the chain of a log's records), or is followed by what
 * may follow a record (wal_may_follow); else (the last record before a
 * reused file's older bytes looks like that) only when its length field
 * carries the CRC-32C flag, as this version's records do.  A checksum
 * costs a candidate at most about 2 KiB whatever its length (the prefix
 * checksums above), so every candidate is checked; all of them together
 * over more than 8 times the bytes after OFF and 64 MiB (bytes that look
 * like records at nearly every offset: no log or crash writes such)
 * end the search.  The end marks of segment SEG_FIRST found say whether
 * a group after the bad record's (which starts at GSTART) was written:
 * one of a group starting later, or a record after the end mark of the
 * group starting at GSTART. */
static void wal_count_after(const uint8_t *buf, size_t n, size_t off, uint64_t next,
                            uint64_t seg_first, size_t gstart, wal_found *f) {
  uint64_t budget = 8 * (uint64_t)(n - off) + (64u << 20), cost = 0;
  size_t own_end = 0; /* after the end mark of the group starting at GSTART */
  uint64_t expect = 0; /* right after a record found: the seq the next one holds */
  wal_pfx pf[2] = {{0}};
  *f = (wal_found){0};
  for (size_t at = off + 1; at < n && n - at >= WAL_HDR;) {
    uint64_t seq = wal_get64(buf + at + 8), len = wal_len(buf + at);
    uint64_t window = (at - off) / WAL_HDR;
    int skip = seq == WAL_SKIP_SEQ;
    int fits = (skip ? len < WAL_SKIP_MAX : seq >= next && seq - next <= window) &&
               len <= n - at - WAL_HDR; /* not one, or one past the file's end */
    /* this version's records carry the CRC-32C flag: an older sparse
     * push's small keys, read as a length, do not */
    if (fits && !(expect && (skip || seq == expect)) &&
        !wal_may_follow(buf, n, at + WAL_HDR + len, seq, next, window + len / WAL_HDR + 1) &&
        !(wal_get32(buf + at) & WAL_CRC32C))
      fits = 0;
    if (fits && cost > budget) {
      wal_found_cut(f, at);
      break;
    }
    if (fits && !wal_count_check(buf, n, off, at, pf, &cost)) {
      at += WAL_HDR + len;
      uint64_t ms;
      if (!skip) {
        if (!f->n++) f->first_at = at - WAL_HDR - len, f->first_seq = seq;
        if (seq > f->last_seq) f->last_seq = seq;
        f->end = at;
        expect = seq + 1;
      } else if (wal_mark(buf + at - WAL_HDR - len, (uint32_t)len, seg_first, &ms)) {
        if (ms > gstart) f->later = 1; /* a group that started after the bad one's */
        else if (ms == gstart) own_end = at;
      }
    } else {
      expect = 0;
      at++;
    }
  }
  free(pf[0].c);
  free(pf[1].c);
  if (own_end && f->end > own_end) f->later = 1; /* records after its group's end */
}

/* wal_cut truncates segment I to LEN bytes (removing it when empty) and
 * syncs; a failure is an error (the next appends would follow garbage). */
static int wal_cut(psd_wal *w, size_t i, size_t len, ps_errbuf *eb) {
  char name[32];
  wal_seg_name(name, sizeof name, w->segs[i].first);
  int rc = 0;
  if (len == 0) {
    if (unlinkat(w->dirfd, name, 0) < 0 && errno != ENOENT) rc = -1;
    w->segs[i].bytes = 0;
  } else {
    int fd = openat(w->dirfd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)len) < 0 || fdatasync(fd) < 0) rc = -1;
    if (fd >= 0) close(fd);
    w->segs[i].bytes = len;
  }
  if (rc == 0 && fsync(w->dirfd) < 0) rc = -1;
  if (rc < 0)
    return ps_errf(eb, wal_code(errno), "cannot cut the torn tail of '%s/%s': %s", w->dir, name,
                   strerror(errno));
  return 0;
}

/* wal_sync_seg fdatasyncs segment I: a replayed record may be only in
 * the page cache (the crash came between its write and its sync), and
 * what the replay builds on it (the records appended after it, sparse
 * rows evicted to RocksDB while it runs) must not reach the disk before
 * it does: so before its records are applied. */
static int wal_sync_seg(psd_wal *w, size_t i, ps_errbuf *eb) {
  char name[32];
  wal_seg_name(name, sizeof name, w->segs[i].first);
  int fd = openat(w->dirfd, name, O_WRONLY | O_CLOEXEC);
  if (fd < 0) /* the step that fails for a read-only file: said as such */
    return ps_errf(eb, wal_code(errno), "cannot open '%s/%s' for writing: %s (psd writes its "
                   "redo log: give its user write access)", w->dir, name, strerror(errno));
  int rc = fdatasync(fd) < 0 ? -1 : 0;
  int e = errno;
  close(fd);
  if (rc < 0)
    return ps_errf(eb, wal_code(e), "cannot sync '%s/%s': %s", w->dir, name, strerror(e));
  return 0;
}

/* wal_refuse_records: the replay refuses the log's records (damaged or
 * missing ones: psd_wal_stats.replay_refused), PS_EIO with EB saying why. */
__attribute__((format(printf, 3, 4))) static int wal_refuse_records(psd_wal *w, ps_errbuf *eb,
                                                                    const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  w->refused = 1;
  int rc = ps_verrf(eb, PS_EIO, fmt, ap);
  va_end(ap);
  return rc;
}

/* psd_wal_replay: see psd_wal.h. */
int psd_wal_replay(psd_wal *w, uint64_t from, psd_wal_replay_fn *fn, void *arg, ps_errbuf *eb) {
  uint64_t t0 = uv_hrtime(), last = 0, applied = 0, dropped = 0;
  int rc = 0;
  char ended[160] = ""; /* where the last segment before this one ended its records, and why */
  for (size_t i = 0; rc == 0 && i < w->nsegs; i++) {
    uint8_t *buf = NULL;
    size_t n = 0, off = 0, rend = 0; /* rend: where its last record (not a skip) ends */
    size_t gend = 0;                 /* where the last group read ends (its end mark's end) */
    if (i + 1 < w->nsegs && w->segs[i + 1].first <= from + 1 && wal_starts_ok(w, i + 1)) {
      /* the snapshot holds every record of it (invariant 4: they end
       * where the next segment starts, whose first record says that the
       * roll to it completed): not read, and dropped after the start like
       * any segment a snapshot holds */
      last = w->segs[i].last = w->segs[i + 1].first - 1;
      ended[0] = 0;
      w->skipped++;
      continue;
    }
    char name[32];
    wal_seg_name(name, sizeof name, w->segs[i].first);
    /* Its name is at most the record the replay needs next (invariant 4:
     * the segments before it held every record below it, synced): else
     * those records are lost, whether or not it holds any itself (the
     * last segment a crash left before any record reached it). */
    uint64_t need = (last > from ? last : from) + 1;
    if (w->segs[i].first > need) {
      if (ended[0])
        rc = wal_refuse_records(w, eb, "redo log '%s': segment '%s' starts at record %" PRIu64 ", but "
                     "record %" PRIu64 " is missing%s: refusing to replay past acknowledged "
                     "records", w->dir, name, w->segs[i].first, need, ended);
      else
        rc = wal_refuse_records(w, eb, "redo log '%s': segment '%s' starts at record %" PRIu64 ", but "
                     "the store's snapshot ends at record %" PRIu64 " and record %" PRIu64 " is "
                     "missing (is a log segment or the snapshot missing, or the snapshot from "
                     "another store?): refusing to start", w->dir, name, w->segs[i].first, from,
                     need);
      break;
    }
    if ((rc = wal_read_seg(w, i, &buf, &n, eb)) < 0) break;
    if (n > 0 && (rc = wal_sync_seg(w, i, eb)) < 0) break;
    int stop = 0; /* a segment before the last whose records end before its bytes */
    while (rc == 0 && off < n && !stop) {
      const char *bad = wal_check(buf + off, n - off);
      uint64_t seq = bad ? 0 : wal_get64(buf + off + 8);
      if (!bad && seq == WAL_SKIP_SEQ) { /* a skip record (invariant 8) or an end mark */
        uint64_t gs;
        uint32_t sl = wal_len(buf + off);
        off += WAL_HDR + sl;
        if (wal_mark(buf + off - WAL_HDR - sl, sl, w->segs[i].first, &gs)) gend = off;
        continue;
      }
      /* Damaged bytes that leave out no record the replay needs are
       * stepped over to the first intact record of ours after them: it
       * holds the next seq (a damaged skip record or end mark), or the
       * snapshot holds every record before it.  Looked for where records
       * may follow: in the last segment (its torn-tail rules below use
       * the same search), or in an earlier one that ends before the next
       * segment's first record. */
      wal_found f = {0};
      uint64_t next = rend == 0 ? w->segs[i].first : last + 1;
      if (bad && (i + 1 == w->nsegs || next < w->segs[i + 1].first)) {
        wal_count_after(buf, n, off, next, w->segs[i].first, gend, &f);
        if (f.n && (f.first_seq == next || f.first_seq <= from + 1)) {
          if (f.first_seq == next)
            ps_warn("redo log '%s/%s': %zu damaged bytes at offset %zu (%s) hold no record of "
                    "the log (a damaged skip record or group end mark): replaying on from "
                    "record %" PRIu64, w->dir, name, f.first_at - off, off, bad, f.first_seq);
          else
            ps_warn("redo log '%s/%s': the record at offset %zu is damaged (%s), but the "
                    "snapshot holds every record up to %" PRIu64 ": replaying on from record "
                    "%" PRIu64 " at offset %zu", w->dir, name, off, bad, from, f.first_seq,
                    f.first_at);
          last = f.first_seq - 1;
          /* its group started there or before (where an end mark stepped
           * over ended): no later group's mark starts that early */
          off = rend = gend = f.first_at;
          continue;
        }
      }
      /* a reused file's old bytes: after the last segment's records, or
       * a whole segment no record reached (a roll that failed or was cut
       * short by a crash right after its rename) */
      if (!bad && seq < w->segs[i].first && (i + 1 == w->nsegs || rend == 0)) {
        ps_info("redo log '%s/%s': its records end at offset %zu (a reused file's older "
                "records follow)", w->dir, name, rend);
        rc = wal_cut(w, i, rend, eb);
        break;
      }
      if (!bad && rend == 0 && seq != w->segs[i].first) {
        /* an intact record of a later seq than the name (a reused file's
         * records are older): the file was renamed; its records may be
         * acknowledged ones, so it is neither cut nor removed */
        rc = wal_refuse_records(w, eb, "redo log '%s/%s' starts with record %" PRIu64 ", not %" PRIu64
                     " as its name says (a segment renamed by hand?): refusing to start (its "
                     "name would be %016" PRIx64 ".log)", w->dir, name, seq, w->segs[i].first,
                     seq);
        break;
      }
      if (!bad && seq <= last) bad = "sequence number goes back";
      if (i + 1 < w->nsegs && rend > 0 && (bad || seq != last + 1)) {
        /* before the last segment, the first record that does not follow
         * ends the records (invariant 4: a reused file's old bytes or a
         * write's zeros after them); a record missing for good is caught
         * where the next segment starts */
        snprintf(ended, sizeof ended, "; '%s' ends its records at offset %zu (%s)", name, rend,
                 bad ? bad : "sequence number skips");
        stop = 1;
        break;
      }
      if (bad && i + 1 < w->nsegs) {
        rc = wal_refuse_records(w, eb, "redo log '%s/%s' is corrupt at offset %zu (%s) and later "
                     "segments follow it: refusing to replay past acknowledged records", w->dir,
                     name, off, bad);
        break;
      }
      if (bad) { /* the torn tail of the last group (invariant 5) */
        /* a record of ours carries the next seq; other bytes (a reused
         * file's old ones cut mid-record, a page that never reached the
         * disk) are no record */
        int ours = n - off >= WAL_HDR ? wal_get64(buf + off + 8) == next
                                      : !wal_zeros(buf + off, n - off); /* a cut header */
        /* the bad record (ours, or a skip record) runs past the file's end */
        uint64_t bs = n - off >= WAL_HDR ? wal_get64(buf + off + 8) : 0;
        int cut_short = n - off < WAL_HDR ? ours
                                          : (bs == next || bs == WAL_SKIP_SEQ) &&
                                                n - off - WAL_HDR < wal_len(buf + off);
        /* (f: the search above, made for every bad record of the last segment) */
        uint64_t group = w->o.max_batch_bytes + w->o.max_batch_bytes / 8 + 2 * WAL_SKIP_MAX;
        /* The search checks every candidate (a reused file's older
         * bytes cost it little whatever their length fields say), so it
         * ends early only on bytes that look like records at nearly every
         * offset, which no crash leaves.  A group written after the bad
         * record's starts within GROUP bytes of it (groups are written
         * one after the other): a search cut farther on could only miss
         * records behind a second damaged group. */
        if (f.cut && f.cut_at - off <= group)
          ps_warn("redo log '%s/%s': the search for intact records after the bad one at offset "
                  "%zu stopped at offset %zu, where nearly every byte offset looks like the "
                  "start of a record (no crash leaves such bytes: a damaged disk, or bytes "
                  "not written by psd?): records of this log after it, if any, were not looked "
                  "for (a group written after the bad record's would make it a refusal)",
                  w->dir, name, off, f.cut_at);
        w->scan_cut = f.cut;
        uint64_t after = f.n;
        size_t end = f.end; /* where the dropped records end (past it: no record) */
        /* every seq from NEXT to the last intact record found is lost,
         * also those whose header the damage took (a block of the group's
         * write that never reached the disk): counting the bad record
         * only when its header holds NEXT missed them */
        dropped = after ? f.last_seq - next + 1 : (uint64_t)ours;
        if (!after && !ours)
          end = rend;
        else if (!after) /* the bad record alone, as far as its length reaches */
          end = n - off < WAL_HDR || n - off - WAL_HDR < wal_len(buf + off)
                    ? n
                    : off + WAL_HDR + wal_len(buf + off);
        /* One unsynced group of two records or more holds at most
         * max_batch_bytes of them (invariant 2), plus the skip records
         * the write puts before its records of 64 KiB or more (each under
         * 8 KiB: at most an eighth more), and the next group is written
         * only after its sync: an intact record farther than that from
         * the bad one means the bad one was synced, i.e. an acknowledged
         * record is corrupt, not a torn write.  (A group of one record
         * may be larger, a skip record and the record of NEXT, invariant
         * 8: its record, intact after a damaged skip record, was stepped
         * over to above.) */
        if (f.later) { /* end marks: a group after the bad record's was written */
          rc = wal_refuse_records(w, eb, "redo log '%s/%s' is corrupt at offset %zu (%s), and a "
                       "group written after the one holding it follows (%" PRIu64 " intact "
                       "records after it): the bad record was synced, so acknowledged records "
                       "would be lost; refusing to replay", w->dir, name, off, bad, f.n);
          break;
        }
        if (after && end - off > group) {
          rc = wal_refuse_records(w, eb, "redo log '%s/%s' is corrupt at offset %zu (%s), and %" PRIu64
                       " intact records follow it over %zu bytes, more than one group holds "
                       "(%" PRIu64 " with group_commit_max_bytes %" PRIu64 "): the bad record "
                       "was synced, so "
                       "acknowledged records would be lost; refusing to replay (if "
                       "group_commit_max_bytes was lowered since the log was written, raise it "
                       "again)", w->dir, name, off, bad, after, end - off, group,
                       (uint64_t)w->o.max_batch_bytes);
          break;
        }
        if (dropped == 0 && rend == 0 && !wal_zeros(buf, n < WAL_HDR ? n : WAL_HDR))
          /* neither a record, nor zeros, nor a reused file's older record */
          ps_warn("redo log '%s/%s' holds no record of this log: its %zu bytes start with "
                  "neither a record nor zeros (not written by psd?); removed", w->dir, name, n);
        else if (dropped == 0 && cut_short)
          ps_warn("redo log '%s/%s': its records end at offset %zu; the %zu bytes after are "
                  "the start of a skip record or group end mark that the file's end cuts "
                  "(a write that never completed; or the file was cut short after it was "
                  "written, which loses what it held past the cut): cut off", w->dir, name,
                  rend, n - rend);
        else if (dropped == 0)
          ps_info("redo log '%s/%s': its records end at offset %zu; the %zu bytes after are "
                  "no record of this log (a reused file's older bytes, or a write that never "
                  "completed): cut off", w->dir, name, rend, n - rend);
        else
          ps_warn("redo log '%s/%s': torn tail at offset %zu (%s): %" PRIu64 " record%s (%zu "
                  "bytes) dropped (a write a crash or a failed write cut short, which holds no "
                  "acknowledged record; the last group, synced and damaged since, reads the "
                  "same%s)%s",
                  w->dir, name, rend, bad,
                  dropped, dropped == 1 ? "" : "s", end - rend,
                  cut_short ? "; so does a file cut short after it was written, which loses "
                              "what it held past the cut" : "",
                  n > end ? "; the bytes after them are no record: cut off too" : "");
        rc = wal_cut(w, i, rend, eb);
        break;
      }
      uint32_t len = wal_len(buf + off);
      if (seq > from) {
        uint64_t want = (last > from ? last : from) + 1;
        if (seq != want && rend == 0 && ended[0]) {
          rc = wal_refuse_records(w, eb, "redo log '%s' holds record %" PRIu64 " next, but record "
                       "%" PRIu64 " is missing%s: refusing to replay past acknowledged records",
                       w->dir, seq, want, ended);
          break;
        }
        if (seq != want) {
          rc = wal_refuse_records(w, eb, "redo log '%s' holds record %" PRIu64 " next, but the store's "
                       "snapshot ends at record %" PRIu64 " and record %" PRIu64 " is missing "
                       "(is a log segment or the snapshot missing, or the snapshot from another "
                       "store?): refusing to start",
                       w->dir, seq, from, want);
          break;
        }
        if ((rc = fn(arg, seq, buf + off + WAL_HDR, len, eb)) < 0) break;
        applied++;
      }
      last = seq;
      w->segs[i].last = seq;
      off += WAL_HDR + len;
      rend = off;
    }
    free(buf);
    if (!stop && rend > 0) ended[0] = 0;
    if (stop) w->segs[i].bytes = rend; /* its records' bytes (wal_scan gave the file's) */
  }
  /* Empty segments (a start that wrote nothing) are just removed. */
  for (size_t i = 0; rc == 0 && i < w->nsegs; i++)
    if (w->segs[i].last == 0) {
      char name[32];
      wal_seg_name(name, sizeof name, w->segs[i].first);
      unlinkat(w->dirfd, name, 0);
      memmove(w->segs + i, w->segs + i + 1, (w->nsegs - i - 1) * sizeof *w->segs);
      w->nsegs--;
      i--;
    }
  if (rc < 0) return rc;
  w->next_seq = (last > from ? last : from) + 1;
  w->synced_seq = w->next_seq - 1;
  w->replayed = applied;
  w->replay_last = last;
  w->dropped = dropped;
  w->replay_ms = (uv_hrtime() - t0) / 1000000;
  for (size_t i = 0; i < w->nsegs; i++) w->bytes += w->segs[i].bytes;
  return 0;
}

/* psd_wal_discard: see psd_wal.h. */
int psd_wal_discard(psd_wal *w, uint64_t above, ps_errbuf *eb) {
  for (size_t i = 0; i < w->nsegs; i++) {
    char name[32];
    wal_seg_name(name, sizeof name, w->segs[i].first);
    if (unlinkat(w->dirfd, name, 0) < 0 && errno != ENOENT)
      return ps_errf(eb, PS_EIO, "cannot remove '%s/%s': %s", w->dir, name, strerror(errno));
  }
  wal_unlink_spares(w);
  w->nsegs = 0;
  w->bytes = 0;
  if (above >= w->next_seq) {
    w->next_seq = above + 1;
    w->synced_seq = above;
  }
  (void)fsync(w->dirfd);
  return 0;
}

/* ---- the writer thread ---------------------------------------------------------- */

/* wal_spare_largest moves the largest spare file to the end of the spare
 * list (the next one a roll takes): the more of a new segment's writes
 * land on blocks the file has, the fewer of its syncs commit a new size
 * (invariant 6).  Writer thread (or before it starts). */
static void wal_spare_largest(psd_wal *w) {
  size_t best = 0;
  off_t most = -1;
  for (size_t i = 0; i < w->nspare; i++) {
    char sp[32];
    struct stat st;
    wal_spare_name(sp, sizeof sp, w->spare[i]);
    if (fstatat(w->dirfd, sp, &st, 0) == 0 && st.st_size > most) most = st.st_size, best = i;
  }
  if (w->nspare > 1) {
    uint64_t t = w->spare[best];
    w->spare[best] = w->spare[w->nspare - 1];
    w->spare[w->nspare - 1] = t;
  }
}

/* wal_open_seg makes the segment starting at FIRST (holding no records)
 * the current one, from the largest spare file when there is one
 * (invariant 6), and syncs the directory; the old current one keeps its
 * size (a reused file's old bytes or the last write's zeros may follow
 * its records, invariant 4) and is closed only once the new one exists.
 * Writer thread (or before it starts). */
static int wal_open_seg(psd_wal *w, uint64_t first, char *why, size_t whylen) {
  char name[32];
  wal_seg_name(name, sizeof name, first);
  int fd = -1;
  uint64_t fsize = 0;
  wal_spare_largest(w);
  while (fd < 0 && w->nspare) {
    char sp[32];
    wal_spare_name(sp, sizeof sp, w->spare[--w->nspare]);
    struct stat st;
    if (renameat(w->dirfd, sp, w->dirfd, name) < 0) {
      unlinkat(w->dirfd, sp, 0);
      continue;
    }
    fd = wal_open_file(w, name, 0);
    if (fd >= 0 && fstat(fd, &st) == 0) fsize = (uint64_t)st.st_size;
    else if (fd >= 0) close(fd), fd = -1; /* created afresh below, truncating it */
  }
  if (fd < 0) fd = wal_open_file(w, name, O_CREAT | O_TRUNC);
  if (fd < 0 || fsync(w->dirfd) < 0) {
    int e = errno;
    snprintf(why, whylen, "cannot create redo log segment '%s/%s': %s", w->dir, name, strerror(e));
    if (fd >= 0) close(fd);
    /* not a segment: a spare's old bytes (renamed, then not opened) must
     * not stay under its name, where a replay would take them for the
     * last segment's */
    unlinkat(w->dirfd, name, 0);
    errno = e;
    return -1;
  }
  pthread_mutex_lock(&w->mu);
  int rc = wal_seg_add(w, first, 0, 0);
  pthread_mutex_unlock(&w->mu);
  if (rc < 0) {
    close(fd);
    unlinkat(w->dirfd, name, 0);
    snprintf(why, whylen, "out of memory for a redo log segment");
    errno = ENOMEM;
    return -1;
  }
  if (w->fd >= 0) close(w->fd);
  w->fd = fd;
  w->fsize = fsize;
  return 0;
}

/* wal_take moves the next group out of pend into wbuf (invariant 2);
 * 0, or -1 when it finds no memory (nothing moved).  Under mu. */
static int wal_take(psd_wal *w) {
  uint64_t max = wal_group_max(w);
  if (w->pend_len <= max) {
    uint8_t *b = w->wbuf;
    size_t cap = w->wcap;
    w->wbuf = w->pend;
    w->wcap = w->pend_cap;
    w->wbase = w->pend_base;
    w->wlen = w->pend_len;
    w->wnrec = w->pend_nrec;
    w->pend = b;
    w->pend_cap = cap;
    w->pend_len = 0;
    w->pend_nrec = 0;
    wal_exts x = w->wext; /* empty: filled before its group was sealed */
    w->wext = w->pext;
    w->pext = x;
    /* where the next group's records start in the file's last block when
     * no roll comes between (else wal_fit moves them: invariant 7) */
    w->pend_base =
        w->direct ? (w->segs[w->nsegs - 1].bytes + w->wlen + WAL_HDR + WAL_MARK_LEN) % WAL_ALIGN : 0;
  } else {
    uint8_t *src = w->pend + w->pend_base;
    size_t off = 0;
    uint64_t k = 0;
    while (off < w->pend_len) {
      size_t rl = WAL_HDR + wal_len(src + off);
      if (off > 0 && off + rl > max) break;
      off += rl;
      k++;
    }
    if (off + WAL_ALIGN > w->wcap && wal_grow(&w->wbuf, &w->wcap, 0, off + WAL_ALIGN) < 0) {
      off = WAL_HDR + wal_len(src); /* a group of one record at a time */
      k = 1;
      if (off + WAL_ALIGN > w->wcap && wal_grow(&w->wbuf, &w->wcap, 0, off + WAL_ALIGN) < 0)
        return -1;
    }
    /* the taken pieces of the group's records go with them (wext is
     * empty: its group was written) */
    size_t ne = 0;
    while (ne < w->pext.n && w->pext.v[ne].off < off) ne++;
    if (wal_exts_room(&w->wext, ne) < 0) return -1;
    if (w->pext.n) {
      wal_move(w->wbuf, src, off, w->pext.v, ne, 0);
      if (ne) memcpy(w->wext.v, w->pext.v, ne * sizeof *w->wext.v);
      w->wext.n = ne;
      wal_move(src, src + off, w->pend_len - off, w->pext.v + ne, w->pext.n - ne, off);
      memmove(w->pext.v, w->pext.v + ne, (w->pext.n - ne) * sizeof *w->pext.v);
      w->pext.n -= ne;
      for (size_t i = 0; i < w->pext.n; i++) w->pext.v[i].off -= off;
    } else {
      memcpy(w->wbuf, src, off);
      memmove(src, src + off, w->pend_len - off);
    }
    w->wbase = 0;
    w->pend_len -= off;
    w->pend_nrec -= k;
    w->wlen = off;
    w->wnrec = k;
  }
  /* the last record's seq */
  const uint8_t *b = w->wbuf + w->wbase;
  size_t off = 0, lastoff = 0;
  while (off < w->wlen) {
    lastoff = off;
    off += WAL_HDR + wal_len(b + off);
  }
  w->wlast = w->wlen ? wal_get64(b + lastoff + 8) : 0;
  w->wsealed = 0;
  return 0;
}

/* wal_seal ends wbuf's group with its end mark; its records carry their
 * checksums (psd_wal_append_own).  Writer thread, outside the mutex. */
static void wal_seal(psd_wal *w) {
  /* the group's end mark (invariant 5) after its records: wbuf has room
   * (WAL_ALIGN past them, wal_take, psd_wal_append_own) */
  const wal_seg *cur = &w->segs[w->nsegs - 1];
  uint8_t *m = w->wbuf + w->wbase + w->wlen;
  uint32_t l32 = WAL_MARK_LEN | WAL_CRC32C;
  uint64_t v[5] = {WAL_SKIP_SEQ, WAL_MARK_MAGIC, cur->first, cur->bytes,
                   wal_get64(w->wbuf + w->wbase + 8)};
  memcpy(m, &l32, 4);
  memcpy(m + 8, v, sizeof v);
  w->wlen += WAL_HDR + WAL_MARK_LEN;
  uint32_t crc = wal_crc(m, m + WAL_HDR, WAL_MARK_LEN);
  memcpy(m + 4, &crc, 4);
  w->wsealed = 1;
}

/* wal_fit puts the current segment's last partial block (T bytes, from
 * blk) right before wbuf's records and zeros after them up to a whole
 * block, so that one O_DIRECT write from the buffer's aligned start
 * covers them (invariant 7); *N: the bytes to write.  0, or -1 (ENOMEM). */
static int wal_fit(psd_wal *w, size_t t, size_t *n) {
  size_t end = t + w->wlen, padded = (end + WAL_ALIGN - 1) & ~(size_t)(WAL_ALIGN - 1);
  if (padded > w->wcap) {
    void *p;
    if (posix_memalign(&p, WAL_ALIGN, padded) != 0) {
      errno = ENOMEM;
      return -1;
    }
    memcpy((uint8_t *)p + t, w->wbuf + w->wbase, w->wlen);
    free(w->wbuf);
    w->wbuf = p;
    w->wcap = padded;
  } else if (w->wbase != t) {
    /* after a roll, or a group that held taken pieces (wal_take's guess
     * of where this one starts leaves out their skip records) */
    memmove(w->wbuf + t, w->wbuf + w->wbase, w->wlen);
  }
  w->wbase = t;
  memcpy(w->wbuf, w->blk, t);
  memset(w->wbuf + end, 0, padded - end);
  *n = padded;
  return 0;
}

/* wal_skip writes a skip record of N bytes (at least WAL_HDR) at P:
 * WAL_SKIP_SEQ, zeros, its checksum; replay steps over it (invariant 8). */
static void wal_skip(uint8_t *p, size_t n) {
  uint32_t l32 = (uint32_t)(n - WAL_HDR) | WAL_CRC32C;
  uint64_t seq = WAL_SKIP_SEQ;
  memset(p, 0, n);
  memcpy(p, &l32, 4);
  memcpy(p + 8, &seq, 8);
  uint32_t crc = wal_crc(p, p + WAL_HDR, n - WAL_HDR);
  memcpy(p + 4, &crc, 4);
}

/* wal_ziov makes room for N pieces in ziov; 0 or -1 (ENOMEM). */
static int wal_ziov(psd_wal *w, size_t n) {
  if (n <= w->ziovcap) return 0;
  struct iovec *v = realloc(w->ziov, n * sizeof *v);
  if (!v) {
    errno = ENOMEM;
    return -1;
  }
  w->ziov = v;
  w->ziovcap = n;
  return 0;
}

/* wal_lay lays out a group with taken blocks (invariant 8) for one
 * pwritev at file offset AT0 (a multiple of A: WAL_ALIGN under O_DIRECT,
 * else 1): T bytes of the segment's last partial block (from blk), then
 * the records, copied into zbuf except the whole blocks of each taken
 * piece, which are written from the piece itself: a skip record before
 * the record makes its piece start on a block of the file, and the
 * piece's last partial block is copied, followed by the next records.
 * A record at the start of a segment is copied whole instead: a segment
 * never starts with a skip record (versions before them would take the
 * segment for a torn one; any other skip record makes them refuse the
 * log, invariant 8).  Sets ziov, wfile and zend; returns the bytes to
 * write, or 0 (ENOMEM). */
static size_t wal_lay(psd_wal *w, size_t a, size_t t, uint64_t at0) {
  size_t ext = 0;
  for (size_t i = 0; i < w->wext.n; i++) ext += w->wext.v[i].len;
  size_t need = t + (w->wlen - ext) + w->wext.n * (2 * WAL_ALIGN + WAL_HDR) + WAL_ALIGN;
  if (at0 == 0 && w->wext.n) need += w->wext.v[0].len; /* a first record copied */
  if ((need > w->zcap && wal_grow(&w->zbuf, &w->zcap, 0, need) < 0) ||
      wal_ziov(w, 2 * w->wext.n + 1) < 0) {
    errno = ENOMEM;
    return 0;
  }
  uint8_t *z = w->zbuf;
  const uint8_t *b = w->wbuf + w->wbase;
  const wal_ext *e = w->wext.v, *end = e + w->wext.n;
  size_t zl = t, rs = 0, f = t, nv = 0, n = 0; /* f: bytes of the file from AT */
  memcpy(z, w->blk, t);
  for (size_t off = 0; off < w->wlen;) {
    size_t rl = WAL_HDR + wal_len(b + off);
    if (e == end || e->off >= off + rl) {
      memcpy(z + zl, b + off, rl);
      zl += rl, f += rl, off += rl;
      continue;
    }
    size_t head = e->off - off;
    if (at0 + f == 0 && a > 1) { /* the segment's first record: copied */
      memcpy(z + zl, b + off, head);
      memcpy(z + zl + head, e->src, e->len);
      memcpy(z + zl + head + e->len, b + e->off + e->len, rl - head - e->len);
      zl += rl, f += rl, off += rl;
      e++;
      continue;
    }
    size_t gap = (a - (f + head) % a) % a;
    if (gap && gap < WAL_HDR) gap += a;
    if (gap) wal_skip(z + zl, gap);
    memcpy(z + zl + gap, b + off, head);
    zl += gap + head, f += gap + head; /* on a block boundary now, in zbuf too */
    size_t whole = e->len / a * a, rest = e->len - whole, tail = rl - head - e->len;
    if (zl > rs) w->ziov[nv++] = (struct iovec){z + rs, zl - rs}, n += zl - rs;
    if (whole) w->ziov[nv++] = (struct iovec){(void *)e->src, whole}, n += whole;
    rs = zl;
    memcpy(z + zl, e->src + whole, rest);
    memcpy(z + zl + rest, b + e->off + e->len, tail);
    zl += rest + tail, f += whole + rest + tail, off += rl;
    e++;
  }
  size_t pad = (a - zl % a) % a;
  memset(z + zl, 0, pad);
  if (zl + pad > rs) w->ziov[nv++] = (struct iovec){z + rs, zl + pad - rs}, n += zl + pad - rs;
  w->nziov = nv;
  w->wfile = f - t;
  w->zend = z + zl;
  return n;
}

/* wal_plan sets out the write of wbuf's group at the segment's end, T
 * bytes of its last partial block rewritten before it (invariant 7):
 * ziov, wfile, zend; returns the bytes to write, or 0 (ENOMEM). */
static size_t wal_plan(psd_wal *w, size_t t) {
  if (w->wext.n)
    return wal_lay(w, w->direct ? WAL_ALIGN : 1, t, w->segs[w->nsegs - 1].bytes - t);
  size_t n = w->wlen;
  if (wal_ziov(w, 1) < 0 || (w->direct && wal_fit(w, t, &n) < 0)) return 0;
  w->ziov[0] = (struct iovec){w->wbuf + w->wbase - t, n};
  w->nziov = 1;
  w->wfile = w->wlen;
  w->zend = w->wbuf + w->wbase + w->wlen;
  return n;
}

/* wal_write writes wbuf at the synced end of the current segment and
 * syncs it (invariants 1, 3, 7, 8).  0, or -1 with WHY. */
static int wal_write(psd_wal *w, uint64_t *write_ns, uint64_t *sync_ns, char *why,
                     size_t whylen) {
  wal_seg *cur = &w->segs[w->nsegs - 1];
  if (w->retrying && ftruncate(w->fd, (off_t)cur->bytes) == 0) w->fsize = cur->bytes;
  uint64_t t0 = wal_now_ns();
  size_t t = w->direct ? cur->bytes % WAL_ALIGN : 0, n = wal_plan(w, t), done = 0;
  if (!n) {
    snprintf(why, whylen, "cannot write the redo log '%s': out of memory", w->dir);
    return -1;
  }
  struct iovec *v = w->ziov;
  size_t nv = w->nziov;
  uint64_t at = cur->bytes - t;
  while (done < n) {
    ssize_t r = pwritev(w->fd, v, (int)(nv < IOV_MAX ? nv : IOV_MAX), (off_t)(at + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EINVAL && w->direct && done == 0) {
      int fl = fcntl(w->fd, F_GETFL);
      if (fl >= 0 && fcntl(w->fd, F_SETFL, fl & ~O_DIRECT) == 0) {
        wal_refused(w, "writes", EINVAL);
        t = 0; /* the records alone, where they end */
        at = cur->bytes;
        if (!(n = wal_plan(w, 0))) {
          snprintf(why, whylen, "cannot write the redo log '%s': out of memory", w->dir);
          return -1;
        }
        v = w->ziov;
        nv = w->nziov;
        continue;
      }
      errno = EINVAL;
    }
    if (r <= 0) {
      if (r == 0) errno = EIO;
      snprintf(why, whylen, "cannot write the redo log '%s': %s", w->dir, strerror(errno));
      return -1;
    }
    done += (size_t)r;
    for (size_t k = (size_t)r; k && nv;) { /* a short write: on from where it stopped */
      if (k >= v->iov_len) {
        k -= v->iov_len, v++, nv--;
      } else {
        v->iov_base = (uint8_t *)v->iov_base + k, v->iov_len -= k;
        k = 0;
      }
    }
  }
  w->pad_end = w->direct && at + n >= w->fsize;
  if (at + n > w->fsize) w->fsize = at + n;
  uint64_t t1 = wal_now_ns();
  int r = w->o.sync ? w->o.sync(w->fd, w->o.sync_arg) : fdatasync(w->fd);
  *write_ns = t1 - t0;
  *sync_ns = wal_now_ns() - t1;
  if (r < 0) {
    snprintf(why, whylen, "cannot sync the redo log '%s': %s", w->dir, strerror(errno));
    return -1;
  }
  if (w->direct) { /* the new last partial block, for the next group */
    size_t tl = (size_t)((cur->bytes + w->wfile) % WAL_ALIGN);
    memcpy(w->blk, w->zend - tl, tl);
  }
  return 0;
}

/* wal_trim deletes the segments before the current one whose records a
 * snapshot holds, and rolls the current one when it holds records
 * (invariant 4).  Writer thread, nothing unsynced. */
static void wal_trim(psd_wal *w, uint64_t upto) {
  char why[300];
  wal_seg *cur = &w->segs[w->nsegs - 1];
  if (cur->last && wal_open_seg(w, cur->last + 1, why, sizeof why) < 0)
    ps_warn("%s; the log grows until a roll succeeds", why);
  size_t keep = 0;
  int removed = 0;
  for (size_t i = 0; i < w->nsegs; i++) {
    wal_seg *s = &w->segs[i];
    char name[32];
    wal_seg_name(name, sizeof name, s->first);
    char sp[32];
    wal_spare_name(sp, sizeof sp, s->first);
    int spare = w->nspare < WAL_SPARES && !w->low; /* reused by a later roll (invariants 6, 9) */
    if (i + 1 < w->nsegs && s->last <= upto &&
        (spare ? renameat(w->dirfd, name, w->dirfd, sp) : unlinkat(w->dirfd, name, 0)) == 0) {
      if (spare) w->spare[w->nspare++] = s->first;
      pthread_mutex_lock(&w->mu);
      w->bytes -= s->bytes;
      pthread_mutex_unlock(&w->mu);
      removed = 1;
      continue;
    }
    w->segs[keep++] = *s;
  }
  pthread_mutex_lock(&w->mu);
  w->nsegs = keep;
  pthread_mutex_unlock(&w->mu);
  if (removed) (void)fsync(w->dirfd);
}

/* wal_drop_spares removes the spare files (invariant 6): the disk failed
 * a write (WHY), and they are only kept for speed.  Writer thread. */
static void wal_drop_spares(psd_wal *w, const char *why) {
  if (!w->nspare) return;
  ps_info("redo log '%s': %zu spare segment files removed (%s)", w->dir, w->nspare, why);
  wal_unlink_spares(w);
  (void)fsync(w->dirfd);
}

/* wal_wait_more waits up to max_wait_us for the group to fill (invariant
 * 2).  Under mu. */
static void wal_wait_more(psd_wal *w) {
  if (!w->o.max_wait_us || w->pend_len >= wal_group_max(w)) return;
  struct timespec dl = ps_deadline_ns((uint64_t)w->o.max_wait_us * 1000);
  while (!w->stop && w->pend_len < wal_group_max(w))
    if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT) break;
}

/* wal_sleep waits retry_ms or until stop.  Under mu. */
static void wal_sleep(psd_wal *w) {
  struct timespec dl = ps_deadline_ns((uint64_t)w->o.retry_ms * 1000000);
  while (!w->stop)
    if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT) break;
}

/* wal_mib: BYTES in MiB to one decimal, rounded up when UP, else down. */
static double wal_mib(uint64_t bytes, int up) {
  return (double)((bytes * 10 + (up ? 1048575 : 0)) / 1048576) / 10.0;
}

void psd_wal_short_msg(char *buf, size_t n, const char *dir, uint64_t avail, uint64_t reserve) {
  if (avail >= reserve) /* short still, until a quarter more (invariant 9) */
    snprintf(buf, n, "the redo log's disk is nearly full (%.1f MiB free in '%s', under the %.1f "
             "MiB it waits for: the %.1f MiB kept for the snapshot that lets the log shrink and "
             "a quarter more)", wal_mib(avail, 0), dir, wal_mib(reserve + reserve / 4, 1),
             wal_mib(reserve, 1));
  else
    snprintf(buf, n, "the redo log's disk is nearly full (%.1f MiB free in '%s', under the %.1f "
             "MiB kept for the snapshot that lets the log shrink)", wal_mib(avail, 0), dir,
             wal_mib(reserve, 1));
}

/* wal_check_space looks at the free space of the log's filesystem
 * (invariant 9) and sets or clears w->low, dropping the spares when it
 * becomes short.  Writer thread; takes mu. */
static void wal_check_space(psd_wal *w) {
  struct statvfs sv;
  if (fstatvfs(w->dirfd, &sv) < 0 || !sv.f_blocks) return; /* not known: not short */
  uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize, size = (uint64_t)sv.f_blocks * sv.f_frsize;
  pthread_mutex_lock(&w->mu);
  uint64_t reserve = w->reserve < size / 4 ? w->reserve : size / 4;
  int capped = reserve < w->reserve && !w->cap_said;
  if (capped) w->cap_said = 1;
  int was = w->low, low = reserve && avail < (was ? reserve + reserve / 4 : reserve);
  if (low != was) {
    w->low = low;
    w->changed = 1;
  }
  /* the free space of this look, not of the first: a failed write's
   * answers say the failure, and once the disk works again the state
   * falls back to this message (it said the space left while the disk
   * was full: "0.7 MiB free" with 10 MiB freed since).  A new figure
   * while short is a change too: on_state says it again (the DEGRADED
   * reason kept the first figure with space freed since, not enough) */
  if (low) {
    char m[sizeof w->low_msg];
    psd_wal_short_msg(m, sizeof m, w->dir, avail, reserve);
    if (strcmp(m, w->low_msg)) w->changed = 1;
    memcpy(w->low_msg, m, sizeof m);
  }
  uint64_t want = w->reserve;
  pthread_mutex_unlock(&w->mu);
  if (capped)
    ps_warn("redo log '%s': its disk (%.1f MiB) is small: the room kept free for the snapshot "
            "that lets the log shrink is a quarter of it, %.1f MiB, under the %.1f MiB that "
            "snapshot may take; once the log has filled the rest, the shard may stay DEGRADED "
            "until space is freed", w->dir, (double)size / 1048576.0,
            (double)reserve / 1048576.0, (double)want / 1048576.0);
  if (low && !was) wal_drop_spares(w, "the disk is nearly full");
  if (low != was)
    ps_info("redo log '%s': %.1f MiB free, reserve %.1f MiB: %s", w->dir, wal_mib(avail, 0),
            wal_mib(reserve, 1),
            low ? "short of space, refusing new pushes" : "space again");
}

static void *wal_thread(void *arg) {
  psd_wal *w = arg;
  char why[300];
  pthread_mutex_lock(&w->mu);
  for (;;) {
    if (!w->wlen) {
      while (!w->stop && !w->pend_len && !w->trunc_pending && !w->drop_pending) {
        if (!w->low) {
          pthread_cond_wait(&w->cv, &w->mu);
          continue;
        }
        /* short of space: look again every retry_ms (a snapshot's cut,
         * or the operator, may free some) */
        struct timespec dl = ps_deadline_ns((uint64_t)w->o.retry_ms * 1000000);
        if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) != ETIMEDOUT) continue;
        pthread_mutex_unlock(&w->mu);
        wal_check_space(w);
        pthread_mutex_lock(&w->mu);
        if (w->changed && w->started) uv_async_send(&w->async);
      }
      if (w->stop && !w->pend_len) break;
      wal_wait_more(w);
      if (w->pend_len && wal_take(w) < 0) { /* no memory: not a hot loop */
        if (w->stop) break;               /* (its pushes: "the shard stopped") */
        wal_sleep(w);
        continue;
      }
    }
    uint64_t upto = w->trunc_seq; /* a request made during the write waits for the next turn */
    int trunc = w->trunc_pending, drop = w->drop_pending;
    w->drop_pending = 0;
    if (w->wlen || drop) w->busy_since_ns = wal_now_ns();
    pthread_mutex_unlock(&w->mu);
    if (drop) wal_drop_spares(w, "a snapshot failed");
    if (w->wlen) wal_check_space(w);
    uint64_t wns = 0, sns = 0;
    if (w->wlen && !w->wsealed) wal_seal(w);
    int rc = w->wlen ? wal_write(w, &wns, &sns, why, sizeof why) : 0;
    int e = errno;
    if (rc < 0) wal_drop_spares(w, why);
    pthread_mutex_lock(&w->mu);
    w->busy_since_ns = 0;
    w->write_ns += wns;
    w->sync_ns += sns;
    if (w->wlen && rc == 0) {
      wal_seg *cur = &w->segs[w->nsegs - 1];
      cur->bytes += w->wfile;
      cur->last = w->wlast;
      w->bytes += w->wfile;
      w->bytes_written += w->wfile;
      /* the taken blocks are written and synced: theirs again (invariant 8) */
      w->zc_records += w->wext.n;
      for (size_t i = 0; i < w->wext.n; i++) {
        w->lent_records += w->wext.v[i].lend != NULL;
        wal_give(w, &w->wext.v[i]);
      }
      w->wext.n = 0;
      w->synced_seq = w->wlast;
      w->syncs++;
      w->records += w->wnrec;
      w->wlen = 0;
      w->retrying = 0;
      w->lent_seq = UINT64_MAX;
      if (w->failed) w->failed = 0, w->changed = 1;
    } else if (rc < 0) {
      /* the failure's answers free the lent pieces for their clients */
      uint64_t a = wal_unlend(w, &w->wext), b = wal_unlend(w, &w->pext);
      w->lent_seq = a < b ? a : b;
      if (!w->failed) w->changed = 1;
      w->failed = 1;
      w->err_code = wal_code(e);
      snprintf(w->err_msg, sizeof w->err_msg, "%s", why);
      w->retrying = 1;
    }
    pthread_cond_broadcast(&w->synced_cv);
    if (w->started) uv_async_send(&w->async);
    if (rc < 0) {
      if (w->stop) break;
      wal_sleep(w);
      continue;
    }
    if (trunc && w->trunc_seq == upto) w->trunc_pending = 0;
    if (trunc || w->segs[w->nsegs - 1].bytes >= w->o.segment_bytes) {
      w->busy_since_ns = wal_now_ns();
      pthread_mutex_unlock(&w->mu);
      if (trunc) wal_trim(w, upto);
      else if (wal_open_seg(w, w->segs[w->nsegs - 1].last + 1, why, sizeof why) < 0)
        ps_warn("%s", why);
      if (trunc) wal_check_space(w); /* the cut may have freed what it was short of */
      pthread_mutex_lock(&w->mu);
      if (w->changed && w->started) uv_async_send(&w->async);
      w->busy_since_ns = 0;
    }
  }
  w->writer_done = 1;
  pthread_cond_broadcast(&w->synced_cv);
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

#define WAL_WAIT_WARN_S 5 /* psd_wal_wait_synced says so from then on, doubling */

/* psd_wal_wait_synced: see psd_wal.h. */
int psd_wal_wait_synced(psd_wal *w, uint64_t seq, ps_errbuf *eb) {
  pthread_mutex_lock(&w->mu);
  uint64_t t0 = wal_now_ns(), warn_s = WAL_WAIT_WARN_S;
  while (w->synced_seq < seq && w->started && !w->writer_done && !w->failed) {
    struct timespec dl = ps_deadline_ns(1000000000u);
    if (pthread_cond_timedwait(&w->synced_cv, &w->mu, &dl) != ETIMEDOUT) continue;
    uint64_t now = wal_now_ns();
    double waited = (double)(now - t0) / 1e9;
    if (waited < (double)warn_s) continue;
    /* a disk that does not answer: said here too, for the waits the loop's
     * stall check cannot see (a stop's final snapshot waits on the loop);
     * once for waits that reach it together (a stop's dense snapshot and
     * sparse rows) */
    if (!w->wait_warned_ns || now - w->wait_warned_ns >= 1000000000u)
      ps_warn("redo log '%s': waiting %.0f s for the sync of record %" PRIu64 " (the disk is not "
              "answering?)", w->dir, waited, seq);
    w->wait_warned_ns = now;
    warn_s *= 2;
  }
  uint64_t synced = w->synced_seq;
  int failed = w->failed;
  char msg[sizeof w->err_msg];
  snprintf(msg, sizeof msg, "%s", w->err_msg);
  pthread_mutex_unlock(&w->mu);
  if (synced >= seq) return 0;
  if (failed)
    return ps_errf(eb, PS_EDEGRADED, "redo log record %" PRIu64 " is not on disk yet (%s)", seq,
                   msg);
  return ps_errf(eb, PS_ESHUTDOWN, "the redo log stopped before record %" PRIu64 " was synced",
                 seq);
}

/* ---- the loop side ----------------------------------------------------------- */

/* wal_unlink removes WT from the waiter list. */
static void wal_unlink(psd_wal *w, psd_wal_waiter *wt) {
  if (wt->prev) wt->prev->next = wt->next;
  else w->head = wt->next;
  if (wt->next) wt->next->prev = wt->prev;
  else w->tail = wt->prev;
  wt->prev = wt->next = NULL;
}

/* wal_complete answers the waiters the writer's progress decides: synced
 * ones with 0, all others with END (when not 0) or with PS_EDEGRADED while
 * the log fails; then reports a change of state. */
static void wal_complete(psd_wal *w, int end) {
  uint64_t t0 = wal_loop_lock(w);
  uint64_t synced = w->synced_seq;
  int failed = w->failed, changed = w->changed, code = w->err_code, low = w->low;
  uint64_t lent = w->lent_seq;
  char msg[sizeof w->loop_msg];
  snprintf(msg, sizeof msg, "%s", failed || !low ? w->err_msg : w->low_msg);
  w->changed = 0;
  pthread_mutex_unlock(&w->mu);
  wal_loop_time(w, t0);
  while (w->head && w->head->seq <= synced) {
    psd_wal_waiter *wt = w->head;
    wal_unlink(w, wt);
    psd_done_finish(&wt->done, 0, NULL);
  }
  if (failed || end) {
    char m2[sizeof msg + 200];
    if (end) snprintf(m2, sizeof m2, "the shard stopped before the redo log was synced");
    else snprintf(m2, sizeof m2, "shard degraded: " PS_DEGRADED_IN_MEMORY
                  " (it is logged once the disk works again; do not resend it): %s", msg);
    while (w->head && (end || w->head->seq < lent)) { /* (a lent piece's push waits) */
      psd_wal_waiter *wt = w->head;
      wal_unlink(w, wt);
      psd_done_finish(&wt->done, end ? end : PS_EDEGRADED, m2);
    }
  }
  /* either refuses new pushes (invariant 9); a failure while short is
   * said too (its cause is another) */
  int state = failed ? 2 : low ? 1 : 0;
  if (changed && (state != w->loop_failed || (state && strcmp(msg, w->loop_msg)))) {
    w->loop_failed = state;
    snprintf(w->loop_msg, sizeof w->loop_msg, "%s", state ? msg : "");
    if (w->o.on_state)
      w->o.on_state(w->o.arg, !state ? 0 : failed ? code : PS_EDEGRADED, state ? msg : NULL);
  }
}

static void wal_on_async(uv_async_t *a) { wal_complete(a->data, 0); }

/* psd_wal_start: see psd_wal.h. */
int psd_wal_start(psd_wal *w, uv_loop_t *loop, ps_errbuf *eb) {
  char why[300];
  if (wal_open_seg(w, w->next_seq, why, sizeof why) < 0)
    return ps_errf(eb, wal_code(errno), "%s", why);
  /* the thread first: no handle to close (and free) when it cannot start;
   * it wakes the loop only once started (under mu) */
  if (pthread_create(&w->thread, NULL, wal_thread, w) != 0) {
    w->stopped = 1;
    return ps_errf(eb, PS_EIO, "cannot start the redo log's writer thread");
  }
  pthread_mutex_lock(&w->mu);
  uv_async_init(loop, &w->async, wal_on_async);
  w->async.data = w;
  w->started = 1;
  pthread_mutex_unlock(&w->mu);
  return 0;
}

/* psd_wal_set_reserve: see psd_wal.h. */
void psd_wal_set_reserve(psd_wal *w, uint64_t bytes) {
  pthread_mutex_lock(&w->mu);
  w->reserve = bytes;
  pthread_mutex_unlock(&w->mu);
}

/* psd_wal_append: see psd_wal.h. */
int psd_wal_append(psd_wal *w, const struct iovec *iov, int niov, uint64_t *seq, ps_errbuf *eb) {
  return psd_wal_append_own(w, iov, niov, NULL, NULL, NULL, seq, eb);
}

/* psd_wal_append_own: see psd_wal.h. */
int psd_wal_append_own(psd_wal *w, const struct iovec *iov, int niov, void **own,
                       size_t *own_cap, const ps_lend *lend, uint64_t *seq, ps_errbuf *eb) {
  if (!w->started || w->stopped) return ps_errf(eb, PS_ESHUTDOWN, "the redo log is closed");
  size_t len = 0;
  for (int i = 0; i < niov; i++) len += iov[i].iov_len;
  if (len > WAL_MAX_RECORD)
    return ps_errf(eb, PS_ETOOBIG, "a redo log record of %zu bytes is too large", len);
  /* the checksum first, outside the mutex: the caller has just read these
   * bytes (a push's checks), so they are in this thread's cache; the
   * writer would read a zero-copy piece from memory.  The seq is the
   * loop's to hand out. */
  uint64_t t0 = wal_now_ns();
  uint8_t hd[WAL_HDR] = {0};
  uint32_t l32 = (uint32_t)len | WAL_CRC32C;
  uint64_t s = w->next_seq;
  memcpy(hd, &l32, 4);
  memcpy(hd + 8, &s, 8);
  uint32_t crc = wal_crc(hd, hd + WAL_HDR, 0); /* its header's part */
  for (int i = 0; i < niov; i++)
    if (iov[i].iov_len) crc = ps_crc32c(crc, iov[i].iov_base, iov[i].iov_len);
  memcpy(hd + 4, &crc, 4);
  wal_loop_lock(w);
  /* room for the block before the records and the padding (invariant 7) */
  size_t need = w->pend_base + w->pend_len + WAL_HDR + len + WAL_ALIGN;
  if (need > w->pend_cap &&
      wal_grow(&w->pend, &w->pend_cap, w->pend_len ? w->pend_base + w->pend_len : 0, need) < 0) {
    pthread_mutex_unlock(&w->mu);
    return ps_errf(eb, PS_ENOMEM, "out of memory for a redo log record of %zu bytes", len);
  }
  /* the last piece taken by reference (invariant 8), when it lies in the
   * caller's block: the writer writes it from there, and nobody copies
   * the gradients */
  uintptr_t piece = niov > 0 ? (uintptr_t)iov[niov - 1].iov_base : 0, blk = own ? (uintptr_t)*own : 0;
  int take = blk && niov > 0 && iov[niov - 1].iov_len >= WAL_ZC_MIN && piece % WAL_ALIGN == 0 &&
             piece >= blk && iov[niov - 1].iov_len <= *own_cap - (piece - blk) &&
             !(lend && w->failed); /* failing: its answer frees a lent piece (wal_unlend) */
  /* room on the done list for every block the log will hold (wal_give) */
  size_t held = w->done.n + w->pext.n + w->wext.n + 1;
  if (take && (wal_exts_room(&w->done, held) < 0 || wal_exts_room(&w->pext, w->pext.n + 1) < 0))
    take = 0;
  uint8_t *h = w->pend + w->pend_base + w->pend_len, *p = h + WAL_HDR;
  w->next_seq++;
  memcpy(h, hd, WAL_HDR);
  for (int i = 0; i < niov; i++) {
    if (take && i == niov - 1)
      w->pext.v[w->pext.n++] = (wal_ext){.off = (size_t)(p - (w->pend + w->pend_base)),
                                         .len = iov[i].iov_len, .cap = *own_cap, .seq = s,
                                         .src = iov[i].iov_base, .buf = lend ? NULL : *own,
                                         .lend = lend};
    else if (iov[i].iov_len)
      memcpy(p, iov[i].iov_base, iov[i].iov_len);
    p += iov[i].iov_len;
  }
  /* a block whose group is synced (or none) to the caller, and the ones
   * beyond WAL_POOL freed after the unlock: this runs after the push that
   * handed any of them over was applied */
  void *spare[16];
  size_t nspare = 0;
  if (take && lend) {
    lend->hold(lend->arg); /* a lent block stays the caller's */
  } else if (take) {
    *own = w->done.n ? w->done.v[w->done.n - 1].buf : NULL;
    *own_cap = *own ? w->done.v[--w->done.n].cap : 0;
  }
  /* (lent: the copies a failure made of lent pieces, wal_unlend) */
  while (take && w->done.n > WAL_POOL && nspare < 16) spare[nspare++] = w->done.v[--w->done.n].buf;
  w->pend_len += WAL_HDR + len;
  w->pend_nrec++;
  /* Wake the writer when it sleeps for work, or when a group is full. */
  if (w->pend_nrec == 1 || w->pend_len >= wal_group_max(w)) pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  for (size_t i = 0; i < nspare; i++) free(spare[i]);
  wal_loop_time(w, t0);
  *seq = s;
  return 0;
}

/* psd_wal_wait: see psd_wal.h. */
int psd_wal_wait(psd_wal *w, psd_wal_waiter *wt, ps_errbuf *eb) {
  uint64_t t0 = wal_loop_lock(w);
  uint64_t synced = w->synced_seq;
  int failed = w->failed && wt->seq < w->lent_seq; /* (wal_unlend) */
  char msg[sizeof w->err_msg];
  snprintf(msg, sizeof msg, "%s", w->err_msg);
  pthread_mutex_unlock(&w->mu);
  wal_loop_time(w, t0);
  if (wt->seq <= synced) return 0;
  if (failed)
    return ps_errf(eb, PS_EDEGRADED, "shard degraded: " PS_DEGRADED_IN_MEMORY
                   " (it is logged once the disk works again; do not resend it): %s", msg);
  if (w->stopped) return ps_errf(eb, PS_ESHUTDOWN, "the redo log is closed");
  wt->next = NULL;
  wt->prev = w->tail;
  if (w->tail) w->tail->next = wt;
  else w->head = wt;
  w->tail = wt;
  return 1;
}

/* psd_wal_cancel: see psd_wal.h. */
void psd_wal_cancel(psd_wal *w, psd_wal_waiter *wt) {
  if (wt->prev || wt->next || w->head == wt) wal_unlink(w, wt);
}

/* psd_wal_truncate: see psd_wal.h. */
void psd_wal_truncate(psd_wal *w, uint64_t seq) {
  if (!w->started || w->stopped) return;
  pthread_mutex_lock(&w->mu);
  if (seq > w->trunc_seq) {
    w->trunc_seq = seq;
    w->trunc_pending = 1;
    pthread_cond_signal(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
}

/* psd_wal_drop_spares: see psd_wal.h. */
void psd_wal_drop_spares(psd_wal *w) {
  if (!w->started || w->stopped) return;
  pthread_mutex_lock(&w->mu);
  w->drop_pending = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* psd_wal_remove_spares: see psd_wal.h. */
int psd_wal_remove_spares(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d)) != NULL)
    if (wal_named(e->d_name, ".free") && unlinkat(dirfd(d), e->d_name, 0) == 0)
      n++;
  if (n) (void)fsync(dirfd(d));
  closedir(d);
  return n;
}

/* psd_wal_stats_get: see psd_wal.h. */
void psd_wal_stats_get(psd_wal *w, psd_wal_stats *st) {
  pthread_mutex_lock(&w->mu);
  st->bytes = w->bytes;
  st->syncs = w->syncs;
  st->records = w->records;
  st->synced_seq = w->synced_seq;
  st->failed = w->failed;
  st->write_us = w->write_ns / 1000;
  st->sync_us = w->sync_ns / 1000;
  uint64_t since = w->busy_since_ns, now = wal_now_ns();
  st->busy_ms = since && now > since ? (now - since) / 1000000 : 0;
  pthread_mutex_unlock(&w->mu);
  st->loop_us = w->loop_ns / 1000;
  st->loop_max_us = w->loop_max_ns / 1000;
  st->lock_us = w->lock_ns / 1000;
  st->lock_max_us = w->lock_max_ns / 1000;
  st->last_seq = w->next_seq - 1;
  st->replayed = w->replayed;
  st->replay_last = w->replay_last;
  st->replay_dropped = w->dropped;
  st->replay_skipped = w->skipped;
  st->replay_scan_cut = w->scan_cut;
  st->replay_refused = w->refused;
  st->replay_ms = w->replay_ms;
}

/* psd_wal_stop: see psd_wal.h. */
void psd_wal_stop(psd_wal *w) {
  if (!w || !w->started || w->stopped) return;
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  w->stopped = 1;
  /* a clean stop leaves the current segment ending at its records: the
   * last O_DIRECT write's zeros cut off (invariant 7; a replay would) */
  if (w->fd >= 0 && w->nsegs && w->pad_end && w->fsize > w->segs[w->nsegs - 1].bytes &&
      ftruncate(w->fd, (off_t)w->segs[w->nsegs - 1].bytes) == 0 && fdatasync(w->fd) == 0)
    w->fsize = w->segs[w->nsegs - 1].bytes;
  wal_complete(w, PS_ESHUTDOWN);
  if (w->syncs) { /* the figures of scripts/bench_durability's stall measurement */
    double n = (double)w->syncs;
    ps_info("redo log '%s': %" PRIu64 " syncs of %.1f records (%.0f bytes) each; per sync: "
            "pwrite %.0f us, fdatasync %.0f us; the loop thread inside the log %.1f us "
            "(longest once %.0f us), of which blocked on the writer's mutex %.2f us "
            "(longest once %.0f us); %s writes; %" PRIu64 " records written from the "
            "sender's buffer, %" PRIu64 " of them from its shared memory", w->dir, w->syncs,
            (double)w->records / n,
            (double)w->bytes_written / n, (double)w->write_ns / n / 1e3,
            (double)w->sync_ns / n / 1e3, (double)w->loop_ns / n / 1e3,
            (double)w->loop_max_ns / 1e3, (double)w->lock_ns / n / 1e3,
            (double)w->lock_max_ns / 1e3, w->direct ? "O_DIRECT" : "buffered", w->zc_records,
            w->lent_records);
  }
  if (!uv_is_closing((uv_handle_t *)&w->async)) uv_close((uv_handle_t *)&w->async, NULL);
}

/* psd_wal_free: see psd_wal.h. */
void psd_wal_free(psd_wal *w) {
  if (!w) return;
  if (w->started && !w->stopped) psd_wal_stop(w);
  if (w->fd >= 0) close(w->fd);
  if (w->dirfd >= 0) close(w->dirfd);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  pthread_cond_destroy(&w->synced_cv);
  free(w->pend);
  free(w->wbuf);
  free(w->zbuf);
  free(w->ziov);
  wal_exts_free(&w->pext);
  wal_exts_free(&w->wext);
  wal_exts_free(&w->done);
  free(w->segs);
  free(w->dir);
  free(w);
}
