/* ps_pb: checked unpacking of peer messages, and name checks. */
#include "ps_pb.h"

#include <stdio.h>
#include <string.h>

#define PS_PB_MAX_DEPTH 32 /* nested messages; ours go 3 deep */

/* ps_utf8_valid: see ps_pb.h. */
int ps_utf8_valid(const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  while (p < end) {
    unsigned c = *p++;
    if (c == 0) return 0;
    if (c < 0x80) continue;
    unsigned need, min, cp;
    if (c >= 0xc2 && c <= 0xdf) need = 1, min = 0x80, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) need = 2, min = 0x800, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) need = 3, min = 0x10000, cp = c & 0x07;
    else return 0;
    if ((size_t)(end - p) < need) return 0;
    for (unsigned i = 0; i < need; i++) {
      if ((p[i] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (p[i] & 0x3f);
    }
    p += need;
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  }
  return 1;
}

/* pb_varint reads a varint at *P (before END) into *V; 0, or -1 when it
 * runs past END or over 10 bytes. */
static int pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  *v = 0;
  for (unsigned shift = 0; shift < 70 && *p < end; shift += 7) {
    uint8_t b = *(*p)++;
    *v |= (uint64_t)(b & 0x7f) << (shift < 64 ? shift : 63);
    if (!(b & 0x80)) return 0;
  }
  return -1;
}

/* pb_check_strings walks the wire form of a DESC message at BUF (LEN
 * bytes) and checks its string fields, recursing into message fields.
 * Malformed wire data is left to protobuf-c's unpack to refuse (0 here);
 * a bad string is PS_EINVAL. */
static int pb_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                            size_t len, int depth, ps_errbuf *eb) {
  if (depth > PS_PB_MAX_DEPTH)
    return ps_errf(eb, PS_EINVAL, "%s nested deeper than %d messages", desc->short_name,
                   PS_PB_MAX_DEPTH);
  if (!len) return 0; /* (BUF may be NULL then: no pointer arithmetic on it) */
  const uint8_t *p = buf, *end = buf + len;
  while (p < end) {
    uint64_t tag, n;
    if (pb_varint(&p, end, &tag) < 0) return 0;
    switch (tag & 7) {
      case 0:
        if (pb_varint(&p, end, &n) < 0) return 0;
        break;
      case 1:
        if (end - p < 8) return 0;
        p += 8;
        break;
      case 5:
        if (end - p < 4) return 0;
        p += 4;
        break;
      case 2: {
        if (pb_varint(&p, end, &n) < 0 || n > (uint64_t)(end - p)) return 0;
        const ProtobufCFieldDescriptor *f =
            tag >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3))
                                   : NULL;
        if (f && f->type == PROTOBUF_C_TYPE_STRING && !ps_utf8_valid((const char *)p, n))
          return ps_errf(eb, PS_EINVAL, "field '%s' of %s is not valid UTF-8 or holds a NUL byte",
                         f->name, desc->short_name);
        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
          int err = pb_check_strings(f->descriptor, p, n, depth + 1, eb);
          if (err < 0) return err;
        }
        p += n;
        break;
      }
      default:
        return 0; /* groups and bad wire types: unpack refuses them */
    }
  }
  return 0;
}

/* ps_pb_unpack: see ps_pb.h. */
int ps_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                 ProtobufCMessage **out, ps_errbuf *eb) {
  *out = NULL;
  int err = pb_check_strings(desc, buf, len, 0, eb);
  if (err < 0) return err;
  *out = protobuf_c_message_unpack(desc, NULL, len, buf);
  if (!*out) return ps_errf(eb, PS_EINVAL, "malformed %s message", desc->short_name);
  return 0;
}

/* pb_escaped writes S (at most PS_NAME_MAX + 1 bytes of it) to OUT with
 * bytes outside printable ASCII as \xNN. */
static void pb_escaped(char *out, size_t cap, const char *s) {
  size_t o = 0;
  for (size_t i = 0; s[i] && i <= PS_NAME_MAX && o + 5 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    o += (size_t)(c >= 0x20 && c < 0x7f && c != '\'' && c != '\\'
                      ? snprintf(out + o, cap - o, "%c", c)
                      : snprintf(out + o, cap - o, "\\x%02x", c));
  }
  out[o] = '\0';
}

/* ps_name_valid: see ps_pb.h. */
int ps_name_valid(const char *name) {
  static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
  size_t len = name ? strlen(name) : 0;
  return len >= 1 && len <= PS_NAME_MAX && strspn(name, ok) == len;
}

/* ps_name_check: see ps_pb.h. */
int ps_name_check(const char *what, const char *name, ps_errbuf *eb) {
  if (ps_name_valid(name)) return 0;
  size_t len = name ? strlen(name) : 0;
  char shown[4 * PS_NAME_MAX + 16];
  pb_escaped(shown, sizeof shown, name ? name : "");
  return ps_errf(eb, PS_EINVAL, "bad %s name '%s%s' (1-%d letters, digits, '.', '_', '-')", what,
                 shown, len > PS_NAME_MAX ? "..." : "", PS_NAME_MAX);
}

/* ps_text_check: see ps_pb.h. */
int ps_text_check(const char *what, const char *text, size_t max, ps_errbuf *eb) {
  size_t len = text ? strlen(text) : 0;
  if (len > max) return ps_errf(eb, PS_EINVAL, "%s of %zu bytes (at most %zu)", what, len, max);
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)text[i] < 0x20 || text[i] == 0x7f)
      return ps_errf(eb, PS_EINVAL, "%s holds a control character (byte %zu)", what, i);
  return 0;
}
