/* fuzz_chan: tensor-channel frames as a shard reads them from a peer.
 * Input: the bytes a client sends on a connection.  They are cut into
 * frames by the decoder the shard and the client share (ps_chan_rx_feed,
 * fed in small pieces): a header (ps_chan_hdr_decode, the shard's
 * max_request_bytes), meta_len bytes of ps.ChanMeta
 * (ps__chan_meta__unpack), data_len bytes of tensor data;
 * the first frame must pass psd_chan_hello_check, the later ones the
 * dispatch rules of conn_meta_done (push or pull naming a model; a pull
 * without data; a beat, whose data must decode as a HeartbeatRequest to
 * be answered; a sparse pull or push naming a model, whose data length
 * psd_chan_sparse_check weighs against its key count, a refusal answered
 * with the connection kept).  The first frame that fails ends the
 * "connection", as there.  Checks: a decoded header encodes back to the
 * same 32 bytes; a refused hello carries a message, as does a sparse
 * frame refused, which is PS_EINVAL; an accepted sparse frame's keys fit
 * its data. */
#include "fuzz.h"
#include "ps.pb-c.h"
#include "ps_chan.h"
#include "ps_config.h"
#include "psd_chan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fuzz_chan_yaml[] =
    "cluster: fuzz\n"
    "security: {mode: none}\n"
    "shards:\n"
    "  - id: 0\n"
    "    grpc: 127.0.0.1:7000\n"
    "    channel: 127.0.0.1:7100\n"
    "    data_dir: /nonexistent/psd-fuzz\n";

/* fuzz_chan_cfg: the shard's configuration, loaded once. */
static const ps_config *fuzz_chan_cfg(void) {
  static ps_config cfg;
  static int loaded;
  if (!loaded) {
    ps_errbuf eb;
    int rc = ps_config_load_buf(&cfg, "fuzz_chan.yaml", fuzz_chan_yaml,
                                sizeof fuzz_chan_yaml - 1, &eb);
    fuzz_check(rc == 0, "config: %s", eb.msg);
    loaded = 1;
  }
  return &cfg;
}

/* fuzz_chan_frame checks the frame whose meta M follows header H; FIRST:
 * it is the connection's first.  Returns 0 when the shard would go on
 * reading the connection. */
static int fuzz_chan_frame(const ps_config *cfg, const ps_chan_hdr *h, const Ps__ChanMeta *m,
                           int first) {
  if (first) {
    ps_errbuf eb;
    int answer = -1, rc = psd_chan_hello_check(cfg, h, m, &answer, &eb);
    fuzz_note("hello", rc, &eb);
    if (rc < 0) fuzz_check_error(rc, eb);
    fuzz_check(answer == 0 || answer == 1, "answer %d", answer);
    fuzz_check(rc == 0 || rc == PS_EPROTO, "rc %s", ps_errname(rc));
    return rc;
  }
  int rc = PS_EPROTO;
  if ((int)m->op == PS__CHAN_OP__CHAN_PUSH && m->model) rc = 0;
  if ((int)m->op == PS__CHAN_OP__CHAN_PULL && m->model && h->data_len == 0) rc = 0;
  /* a beat is answered, with an error when its data does not decode */
  if ((int)m->op == PS__CHAN_OP__CHAN_BEAT) rc = 0;
  int sparse = (int)m->op == PS__CHAN_OP__CHAN_SPARSE_PULL ||
               (int)m->op == PS__CHAN_OP__CHAN_SPARSE_PUSH;
  if (sparse && m->model) { /* refused or not, the connection goes on */
    ps_errbuf seb;
    int src = psd_chan_sparse_check(h, m, &seb);
    fuzz_note("sparse", src, &seb);
    if (src < 0) fuzz_check_error(src, seb);
    fuzz_check(src == 0 || src == PS_EINVAL, "rc %s", ps_errname(src));
    fuzz_check(src < 0 || (uint64_t)m->n_keys * 8 <= h->data_len, "%u keys past %llu bytes",
               m->n_keys, (unsigned long long)h->data_len);
    rc = 0;
  }
  ps_errbuf eb = {"not a push, pull, beat or sparse request"};
  fuzz_note("frame", rc, &eb);
  return rc;
}

/* One fuzzed connection as ps_chan_rx's callbacks see it. */
typedef struct fuzz_conn {
  ps_chan_rx rx;
  const ps_config *cfg;
  int first;
  uint64_t data_seen;
  int beat;                   /* the frame is a beat: its data is kept ... */
  uint8_t beat_data[1 << 16]; /* ... up to 64 KiB (the fuzz inputs are smaller) */
} fuzz_conn;

static int fuzz_chan_hdr(void *arg) {
  fuzz_conn *f = arg;
  ps_chan_hdr *h = &f->rx.h;
  uint8_t again[PS_CHAN_HDR_LEN];
  int rc = ps_chan_hdr_decode(h, f->rx.hdrbuf, f->cfg->max_request_bytes);
  ps_chan_hdr_encode(again, h);
  fuzz_check(memcmp(again, f->rx.hdrbuf, PS_CHAN_HDR_LEN) == 0, "header does not round-trip");
  if (rc < 0) {
    ps_errbuf eb = {"bad header"};
    fuzz_note("header", rc, &eb);
    fuzz_check(rc == PS_EPROTO || rc == PS_ETOOBIG, "rc %s", ps_errname(rc));
    return rc;
  }
  fuzz_check(h->meta_len <= PS_CHAN_MAX_META && h->data_len <= f->cfg->max_request_bytes,
             "accepted meta_len %u data_len %llu", h->meta_len, (unsigned long long)h->data_len);
  return h->meta_len == 0 ? PS_EPROTO : 0;
}

static int fuzz_chan_meta(void *arg) {
  fuzz_conn *f = arg;
  Ps__ChanMeta *m = ps__chan_meta__unpack(NULL, f->rx.h.meta_len, f->rx.meta);
  if (!m) return PS_EPROTO;
  int rc = fuzz_chan_frame(f->cfg, &f->rx.h, m, f->first);
  f->beat = !f->first && (int)m->op == PS__CHAN_OP__CHAN_BEAT;
  ps__chan_meta__free_unpacked(m, NULL);
  f->first = 0;
  if (rc == 0 && f->rx.h.data_len) f->rx.state = PS_CHAN_RX_DATA;
  return rc;
}

static void fuzz_chan_data(void *arg, const uint8_t *p, size_t n) {
  fuzz_conn *f = arg;
  fuzz_check(f->rx.got + n <= f->rx.h.data_len, "data past the frame's data_len");
  if (f->beat && f->rx.got + n <= sizeof f->beat_data) memcpy(f->beat_data + f->rx.got, p, n);
  f->data_seen += n;
}

static int fuzz_chan_data_done(void *arg) {
  fuzz_conn *f = arg;
  fuzz_check(f->rx.got == f->rx.h.data_len, "data done at %llu of %llu",
             (unsigned long long)f->rx.got, (unsigned long long)f->rx.h.data_len);
  if (f->beat && f->rx.h.data_len <= sizeof f->beat_data) { /* as conn_beat_end decodes it */
    Ps__HeartbeatRequest *b =
        ps__heartbeat_request__unpack(NULL, (size_t)f->rx.h.data_len, f->beat_data);
    if (b) ps__heartbeat_request__free_unpacked(b, NULL);
  }
  f->beat = 0;
  f->rx.state = PS_CHAN_RX_HDR;
  f->rx.got = 0;
  return 0;
}

static int fuzz_chan_never(void *arg) {
  (void)arg;
  fuzz_check(0, "a MAC part without the payload MAC");
  return PS_EPROTO;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const ps_chan_rx_ops ops = {.hdr = fuzz_chan_hdr, .meta = fuzz_chan_meta,
                                     .data = fuzz_chan_data, .data_done = fuzz_chan_data_done,
                                     .mac_done = fuzz_chan_never};
  fuzz_conn f = {.cfg = fuzz_chan_cfg(), .first = 1};
  /* fed in pieces of 1..16 bytes (the input's first byte picks the size),
   * as reads of a socket would cut it */
  size_t piece = size ? (size_t)(data[0] % 16) + 1 : 1, off = 0;
  while (off < size) {
    size_t n = size - off < piece ? size - off : piece;
    long used = ps_chan_rx_feed(&f.rx, data + off, n, &ops, &f);
    if (used < 0) break; /* the connection would be closed */
    fuzz_check((size_t)used == n, "the decoder left %zu of %zu bytes", n - (size_t)used, n);
    off += n;
  }
  ps_chan_rx_release(&f.rx);
  return 0;
}
