/* fuzz_wal: the redo log's replay (psd_wal_open + psd_wal_replay,
 * server/psd_wal.h) with the shard's record decoders behind it, as
 * psd_main's recovery calls them: kind 2 (PSD_SPARSE_LOG_PUSH) goes to
 * psd_shard_sparse_replay, every other record to psd_store_replay (kind
 * 1, a dense push; kind 3, one logged encoded).  The shard is tests/fuzz/fuzz_psd.h's (model "m", gen
 * 1: dense chunks 0..2 of 16 floats, sparse tables 0 (dim 4) and 3 (dim
 * 3)).
 *
 * Input: one byte MODE, then
 *   MODE % 3 == 0: the bytes of segment 0000000000000001.log as they are
 *                  (headers, checksums and all);
 *   MODE % 3 == 1: records, each a u16 length (little-endian) and that
 *                  many payload bytes, written as one segment with valid
 *                  headers (seq B + 1, B + 2, ...; zlib's CRC-32, the
 *                  format of logs before CRC-32C, or when (MODE / 12) % 2
 *                  is 1 CRC-32C and the len field's flag), so
 *                  that the payloads reach the decoders (B grows by each
 *                  such input's record count, so that the shard's rows and
 *                  chunks, which hold the seq of the last record applied,
 *                  take the next input's records without a new shard);
 *   MODE % 3 == 2: the same split into two segments (the second holding
 *                  the records after the first half).
 * Replay starts after FROM = (MODE / 3) % 4 (+ B when framed: the
 * snapshot's position).  The log directory is made anew for every input;
 * the shard (and B = 0) after a raw input that applied a record, and
 * every 256 inputs.
 *
 * Checks: psd_wal_replay returns 0, or a PS_E* code with a message; a
 * record a decoder applied leaves its sparse rows finite (the push path
 * refuses gradients that would not); nothing leaks (LeakSanitizer). */
#include <fcntl.h>
#include <zlib.h>

#include "fuzz_psd.h"
#include "ps_crc32c.h"
#include "ps_log.h"
#include "psd_wal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_WAL_RESET_EVERY 256

static struct {
  fuzz_psd f;
  unsigned runs;
  uint64_t applied;
  uint64_t base; /* framed inputs' seqs start after it (grows: no reset needed) */
} fz;

static void fuzz_wal_close(void) { fuzz_psd_close(&fz.f); }

/* fuzz_wal_write writes LEN bytes at P to segment FIRST in DIR. */
static void fuzz_wal_write(const char *dir, uint64_t first, const void *p, size_t len) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%016llx.log", dir, (unsigned long long)first);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  fuzz_check(fd >= 0, "cannot create %s", path);
  fuzz_check(len == 0 || write(fd, p, len) == (ssize_t)len, "cannot write %s", path);
  close(fd);
}

/* fuzz_wal_frame appends the record of PAYLOAD (LEN bytes, seq SEQ) to
 * OUT (room for WAL header + LEN at *N). */
static void fuzz_wal_frame(uint8_t *out, size_t *n, uint64_t seq, const uint8_t *payload,
                           size_t len, int c32c) {
  uint8_t *h = out + *n;
  uint32_t l = (uint32_t)len | (c32c ? 0x80000000u : 0);
  memcpy(h, &l, 4);
  memcpy(h + 8, &seq, 8);
  uint32_t crc;
  if (c32c) {
    crc = ps_crc32c(ps_crc32c(ps_crc32c(0, h, 4), h + 8, 8), payload, len);
  } else {
    uLong c = crc32(0L, Z_NULL, 0);
    c = crc32(c, h, 4);
    c = crc32(c, h + 8, 8);
    crc = (uint32_t)crc32_z(c, payload, len);
  }
  memcpy(h + 4, &crc, 4);
  memcpy(h + 16, payload, len);
  *n += 16 + len;
}

/* fuzz_wal_one: psd_main_replay_one, then the check of a sparse record
 * applied: its rows are finite (fuzz_psd_row_sum aborts otherwise). */
static int fuzz_wal_one(void *arg, uint64_t seq, const uint8_t *p, size_t len, ps_errbuf *eb) {
  (void)arg;
  int rc;
  if (len && p[0] == PSD_SPARSE_LOG_PUSH) {
    rc = psd_shard_sparse_replay(&fz.f.sh, seq, p, len, eb);
    if (rc == 0 && len >= 14 && len >= (size_t)14 + p[1]) {
      const uint8_t *q = p + 2 + p[1];
      uint32_t table, n;
      memcpy(&table, q, 4);
      memcpy(&n, q + 8, 4);
      uint64_t h = 0;
      for (uint32_t i = 0; i < n && i < 64 && 14 + p[1] + 8 * (size_t)(i + 1) <= len; i++) {
        uint64_t key;
        memcpy(&key, q + 12 + 8 * (size_t)i, 8);
        fuzz_psd_row_sum(&fz.f, table, key, &h);
      }
    }
  } else {
    rc = psd_store_replay(fz.f.sh.store, seq, p, len, eb);
  }
  if (rc == 0) fz.applied++;
  fuzz_note("record", rc, eb);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!fz.f.open) {
    ps_log_init("fuzz_wal", LOG_CRIT);
    fuzz_psd_open(&fz.f, "fuzz_wal", 1, 1);
    atexit(fuzz_wal_close);
  }
  if (size == 0) return 0;
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/redo", fz.f.dir);
  fuzz_check(mkdir(dir, 0755) == 0, "cannot create %s", dir);
  unsigned mode = data[0] % 3;
  uint64_t from = (data[0] / 3) % 4;
  int c32c = (data[0] / 12) % 2;
  if (mode) from += fz.base;
  data++, size--;
  if (mode == 0) {
    fuzz_wal_write(dir, 1, data, size);
  } else {
    /* at most size / 2 records of size bytes in all: 16 + 2 bytes each */
    uint8_t *buf = malloc(size * 9 + 16);
    fuzz_check(buf != NULL, "out of memory");
    size_t nrec = 0, off = 0;
    for (size_t o = 0; o + 2 <= size; nrec++) {
      size_t len = (size_t)data[o] | (size_t)data[o + 1] << 8;
      o += 2;
      o += len < size - o ? len : size - o;
    }
    size_t half = mode == 2 ? nrec / 2 : nrec, n = 0;
    uint64_t seq = fz.base + 1, first = seq;
    for (size_t i = 0; off + 2 <= size; i++) {
      size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;
      off += 2;
      if (len > size - off) len = size - off;
      if (i == half && n) {
        fuzz_wal_write(dir, first, buf, n);
        n = 0, first = seq;
      }
      fuzz_wal_frame(buf, &n, seq++, data + off, len, c32c);
      off += len;
    }
    fuzz_wal_write(dir, first, buf, n);
    free(buf);
    fz.base = seq + 4; /* past FROM's largest too */
  }
  psd_wal_opts o = {.dir = dir, .max_batch_bytes = 1 << 20, .max_wait_us = 0};
  psd_wal *w = NULL;
  ps_errbuf eb = {{0}};
  uint64_t applied = fz.applied;
  int rc = psd_wal_open(&w, &o, &eb);
  fuzz_check(rc == 0, "open: %s", eb.msg);
  rc = psd_wal_replay(w, from, fuzz_wal_one, NULL, &eb);
  fuzz_note("replay", rc, &eb);
  if (rc < 0) fuzz_check_error(rc, eb);
  psd_wal_free(w);
  fuzz_check(nftw(dir, fuzz_psd_rm, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove %s", dir);
  if ((mode == 0 && fz.applied != applied) || ++fz.runs % FUZZ_WAL_RESET_EVERY == 0) {
    fuzz_psd_close(&fz.f);
    fuzz_psd_open(&fz.f, "fuzz_wal", 1, 1);
    fz.base = 0;
  }
  return 0;
}
