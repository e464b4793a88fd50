/* fuzz_chan: tensor-channel frames as a shard reads them from a peer.
 * Input: the bytes a client sends on a connection.  They are cut into
 * frames the way psd_chan.c's receive state machine does: a header
 * (ps_chan_hdr_decode, the shard's max_request_bytes), meta_len bytes of
 * ps.ChanMeta (ps__chan_meta__unpack), data_len bytes of tensor data;
 * the first frame must pass psd_chan_hello_check, the later ones the
 * dispatch rules of conn_meta_done (push or pull naming a model; a pull
 * without data; a beat, whose data must decode as a HeartbeatRequest to
 * be answered).  The first frame that fails ends the "connection", as
 * there.  Checks: a decoded header encodes back to the same 32 bytes; a
 * refused hello carries a message. */
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
                           const uint8_t *data, size_t avail, int first) {
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
  if ((int)m->op == PS__CHAN_OP__CHAN_BEAT) {
    rc = 0; /* answered, with an error when the data does not decode */
    if (h->data_len <= avail) {
      Ps__HeartbeatRequest *b = ps__heartbeat_request__unpack(NULL, (size_t)h->data_len, data);
      if (b) ps__heartbeat_request__free_unpacked(b, NULL);
    }
  }
  ps_errbuf eb = {"not a push, pull or beat"};
  fuzz_note("frame", rc, &eb);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const ps_config *cfg = fuzz_chan_cfg();
  size_t off = 0;
  for (int first = 1; size - off >= PS_CHAN_HDR_LEN; first = 0) {
    ps_chan_hdr h;
    uint8_t again[PS_CHAN_HDR_LEN];
    int rc = ps_chan_hdr_decode(&h, data + off, cfg->max_request_bytes);
    ps_chan_hdr_encode(again, &h);
    fuzz_check(memcmp(again, data + off, PS_CHAN_HDR_LEN) == 0, "header does not round-trip");
    if (rc < 0) {
      ps_errbuf eb = {"bad header"};
      fuzz_note("header", rc, &eb);
      fuzz_check(rc == PS_EPROTO || rc == PS_ETOOBIG, "rc %s", ps_errname(rc));
      return 0;
    }
    fuzz_check(h.meta_len <= PS_CHAN_MAX_META && h.data_len <= cfg->max_request_bytes,
               "accepted meta_len %u data_len %llu", h.meta_len,
               (unsigned long long)h.data_len);
    off += PS_CHAN_HDR_LEN;
    if (h.meta_len == 0 || size - off < h.meta_len) return 0;
    Ps__ChanMeta *m = ps__chan_meta__unpack(NULL, h.meta_len, data + off);
    if (!m) return 0;
    off += h.meta_len;
    rc = fuzz_chan_frame(cfg, &h, m, data + off, size - off, first);
    ps__chan_meta__free_unpacked(m, NULL);
    if (rc < 0 || size - off < h.data_len) return 0;
    off += (size_t)h.data_len;
  }
  return 0;
}
