/* ps_codec: the gradient and parameter codecs of the wire (DESIGN.md
 * "Gradient codecs"), one table, BytePS's Compressor as the model.
 *
 * A payload is the chunks of a request encoded one after the other, each
 * chunk on its own (the per-chunk scales of int8 and onebit are that
 * chunk's).  The encoded size of a chunk is a function of the codec, its
 * element count and (topk only) the fraction kept: ps_codec_size; a
 * payload's size is the sum over its chunks (ps_layout_payload_bytes in
 * ps_model.h, which also applies the per-tensor choice).
 *
 * Chunk formats (little-endian; the host must be little-endian too):
 *   fp32    n float32
 *   fp16    n binary16, round to nearest even; a magnitude above 65504
 *           saturates to +-65504 (never Inf)
 *   int8    float32 scale s = max|x| / 127, then n int8 q = round(x / s)
 *           (nearest, ties to even); x' = q * s
 *   onebit  float32 scale s = mean|x|, then ceil(n / 8) bytes of sign bits
 *           (bit i%8 of byte i/8 set: element i negative); x' = +-s
 *   topk    k = ps_codec_topk_k(n, frac) uint32 indices, strictly
 *           increasing, < n, then k float32 values; the rest are 0.
 *           The k largest magnitudes (ties: the lowest indices), found
 *           by a sampled threshold and checked exact (ps_codec_topk_encode)
 *
 * int8 rounds to nearest, not stochastically: the encoding is then a
 * function of its input (reruns, both planes and tests see the same
 * bytes), needs no random state per worker, and its bias (at most s/2 per
 * element) is what the error-feedback residual carries into the next step.
 *
 * Error feedback (ps_codec_encode_ef) wraps any lossy codec: the residual
 * (what the encoding lost so far) is added to the next gradient before it
 * is encoded.  Invariant: after every call, the sum of the decoded
 * payloads sent plus the residual equals the sum of the gradients given,
 * up to float rounding.  The residual lives where the encoding happens
 * (a worker keeps one per chunk of the model; a worker that restarts
 * starts from a zero residual and so loses what it had not yet sent).
 *
 * Thread-safe: no state outside the caller's buffers. */
#ifndef PS_CODEC_H
#define PS_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"

/* Wire values (ChanMeta.codec, PushRequest.codec, PullRequest.codec):
 * 0 is fp32, so an old client that never sets the field still works. */
typedef enum ps_codec_id {
  PS_CODEC_FP32 = 0,
  PS_CODEC_FP16 = 1,
  PS_CODEC_INT8 = 2,
  PS_CODEC_ONEBIT = 3,
  PS_CODEC_TOPK = 4,
  PS_CODEC_N
} ps_codec_id;

/* The fraction topk keeps when a spec gives none. */
#define PS_CODEC_TOPK_DEFAULT 0.01f

/* ps_codec_name returns the static name of ID ("fp32", ...), or "unknown". */
const char *ps_codec_name(ps_codec_id id);

/* ps_codec_parse converts NAME to *ID; "" (or NULL) is fp32.  PS_EINVAL
 * naming the codec and listing the known ones otherwise.  WHAT names the
 * setting in the message ("codec", "pull codec"). */
int ps_codec_parse(const char *name, const char *what, ps_codec_id *id, ps_errbuf *eb);

/* ps_codec_valid returns whether a wire value V names a codec. */
int ps_codec_valid(uint32_t v);

/* ps_codec_topk_k returns the elements topk keeps of N: ceil(N * FRAC)
 * within [1, N] (0 when N is 0); FRAC outside (0, 1] is taken as
 * PS_CODEC_TOPK_DEFAULT. */
uint32_t ps_codec_topk_k(uint32_t n, float frac);

/* ps_codec_size returns the encoded bytes of a chunk of N elements. */
uint64_t ps_codec_size(ps_codec_id id, uint32_t n, float topk);

/* ps_codec_encode writes the encoding of X (N floats, finite) to OUT
 * (ps_codec_size bytes).  Encoding never fails. */
void ps_codec_encode(ps_codec_id id, const float *x, uint32_t n, float topk, void *out);

/* How ps_codec_topk_encode found its k elements; every path gives the
 * same bytes (the k largest magnitudes, ties to the lowest indices). */
typedef enum ps_codec_topk_path {
  PS_TOPK_SAMPLED, /* a sampled threshold passed k..2k candidates, trimmed to k */
  PS_TOPK_SMALL,   /* chunk too small to sample: exact radix select */
  PS_TOPK_UNDER,   /* fewer than k passed the threshold: exact radix select */
  PS_TOPK_OVER,    /* more than 2k passed: exact radix select */
  PS_TOPK_EXACT    /* EXACT was asked: exact radix select */
} ps_codec_topk_path;

/* ps_codec_topk_encode is ps_codec_encode for topk (which calls it with
 * EXACT 0): with EXACT set, a radix select over the whole chunk (4 passes
 * over it); else the sampled threshold (1 pass, plus a sample of up to
 * 8,192 elements), falling back to the radix select when it misses.
 * Returns the path taken (tests and ps_bench_codec). */
ps_codec_topk_path ps_codec_topk_encode(const float *x, uint32_t n, float topk, int exact,
                                        void *out);

/* ps_codec_check validates an encoded chunk IN of LEN bytes before it is
 * decoded: LEN equal to ps_codec_size, a finite scale, topk indices in
 * range and strictly increasing (so none repeats).  0 or PS_EINVAL with a
 * message naming WHAT (e.g. "chunk 3 of model 'm'").  Values themselves
 * (a fp16 Inf, a topk NaN) are the decoder's caller's to check. */
int ps_codec_check(ps_codec_id id, const void *in, uint64_t len, uint32_t n, float topk,
                   const char *what, ps_errbuf *eb);

/* ps_codec_decode_acc adds ALPHA times the decoding of IN (checked by
 * ps_codec_check) to OUT (N floats). */
void ps_codec_decode_acc(ps_codec_id id, const void *in, uint32_t n, float topk, float alpha,
                         float *out);

/* ps_codec_decode writes the decoding of IN to OUT (N floats). */
void ps_codec_decode(ps_codec_id id, const void *in, uint32_t n, float topk, float *out);

/* ps_codec_encode_ef encodes G (N floats) with error feedback: RESIDUAL
 * (N floats, zero at first) += G, encode RESIDUAL to OUT, RESIDUAL -= its
 * decoding.  fp32 sends G as it is and leaves RESIDUAL alone.
 *
 * CLIP > 0 (the model's clip_norm): an encoding whose decoding has an L2
 * norm above CLIP is scaled down to CLIP (fp16 within its 2^-11 rounding)
 * before the residual takes it off, so that what the shard decodes stays
 * within the clip_norm it checks each chunk against, while the residual
 * (the gradients given plus what earlier steps left out) may exceed it;
 * what the scaling took off stays in RESIDUAL for the next steps, and the
 * invariant above still holds.  G itself is the caller's to clip. */
void ps_codec_encode_ef(ps_codec_id id, const float *g, uint32_t n, float topk, float clip,
                        float *residual, void *out);

/* ps_absmax_bits returns max |x| over N floats as the bits of |x|
 * (monotone in |x| for finite floats; >= 0x7f800000 when one is not
 * finite): an integer reduction, so the loop vectorises.  The int8
 * codec's scale and the shard's gradient checks (psd_optim) use it. */
uint32_t ps_absmax_bits(const float *x, size_t n);

/* fp16 conversions, exposed for tests and pull decoding. */
uint16_t ps_codec_f2h(float f);
float ps_codec_h2f(uint16_t h);

#endif
