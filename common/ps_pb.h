/* ps_pb: protobuf-c messages taken from the network, and names.
 *
 * protobuf-c keeps a `string` field as a C string: it does not check
 * UTF-8, and a NUL inside the field silently cuts it short (a hello whose
 * cluster was "local\0junk" matched "local").  Every message that arrives
 * from a peer is unpacked through ps_pb_unpack, which refuses strings that
 * are not valid UTF-8 or hold a NUL, at any depth of nesting, before
 * protobuf-c sees them.  Thread-safe; no global state. */
#ifndef PS_PB_H
#define PS_PB_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "ps_error.h"

#define PS_NAME_MAX 63 /* bytes of a model or cluster name */

/* ps_pb_unpack checks BUF (LEN bytes, borrowed) and unpacks it as DESC
 * into *OUT (the caller frees it with protobuf_c_message_free_unpacked).
 * PS_EINVAL with a message naming the message type (and the field, for a
 * bad string) when it is malformed; PS_ENOMEM. */
int ps_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                 ProtobufCMessage **out, ps_errbuf *eb);

/* ps_utf8_valid says whether the LEN bytes at S are valid UTF-8 without
 * NUL (no overlong forms, surrogates or code points above U+10FFFF). */
int ps_utf8_valid(const char *s, size_t len);

/* ps_name_valid says whether NAME is a valid model or cluster name: 1 to
 * PS_NAME_MAX letters, digits, '.', '_', '-' (what file names, JSON and
 * log lines carry unescaped). */
int ps_name_valid(const char *name);

/* ps_name_check: 0 when NAME is a valid model or cluster name (1 to
 * PS_NAME_MAX letters, digits, '.', '_', '-'), else PS_EINVAL with
 * "bad WHAT name '...'" in EB (the name printed with bytes outside that
 * set escaped as \xNN). */
int ps_name_check(const char *what, const char *name, ps_errbuf *eb);

/* ps_text_check: 0 when TEXT (a host name, a device description) has at
 * most MAX bytes and no control characters (UTF-8 validity is
 * ps_pb_unpack's), else PS_EINVAL naming WHAT. */
int ps_text_check(const char *what, const char *text, size_t max, ps_errbuf *eb);

#endif
