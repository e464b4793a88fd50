/* psw_ctr: the Criteo TSV reader (see psw_ctr.h).  Lines are read with
 * psw_gz_gets, which reads gzipped and plain files alike, into a 64 KiB
 * buffer; each line is parsed in place, field by field, into arrays that
 * double as they fill. */
#include "psw_ctr.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_log.h"
#include "ps_place.h"
#include "psw_gz.h"

#define CTR_LINE_MAX (64 * 1024)
#define CTR_NFIELDS (1 + PSW_CTR_DENSE + PSW_CTR_FIELDS)

uint64_t psw_ctr_key(uint32_t field, uint64_t id) { return ps_mix64(id + ps_mix64(field + 1u)); }

void psw_ctr_release(psw_ctr *c) {
  free(c->label);
  free(c->dense);
  free(c->keys);
  memset(c, 0, sizeof *c);
}

/* ctr_reserve makes C hold N samples (capacity *CAP, doubled). */
static int ctr_reserve(psw_ctr *c, uint64_t n, uint64_t *cap) {
  if (n <= *cap) return 0;
  uint64_t k = *cap ? *cap * 2 : 4096;
  int32_t *l = realloc(c->label, k * sizeof *l);
  if (l) c->label = l;
  float *d = l ? realloc(c->dense, k * PSW_CTR_DENSE * sizeof *d) : NULL;
  if (d) c->dense = d;
  uint64_t *ky = d ? realloc(c->keys, k * PSW_CTR_FIELDS * sizeof *ky) : NULL;
  if (!ky) return PS_ENOMEM;
  c->keys = ky;
  *cap = k;
  return 0;
}

/* ctr_field_name describes 1-based field F for messages. */
static void ctr_field_name(uint32_t f, char *buf, size_t len) {
  if (f == 1)
    snprintf(buf, len, "label");
  else if (f <= 1 + PSW_CTR_DENSE)
    snprintf(buf, len, "integer I%u", f - 1);
  else
    snprintf(buf, len, "categorical C%u", f - 1 - PSW_CTR_DENSE);
}

/* ctr_bad formats "PATH:LINE: field F (what): MSG 'TEXT'". */
static int ctr_bad(ps_errbuf *eb, const char *path, uint64_t line, uint32_t f, const char *msg,
                   const char *text) {
  char what[32], shown[24 * 4 + 8]; /* control bytes as \xNN, never raw to a terminal */
  ctr_field_name(f, what, sizeof what);
  return ps_errf(eb, PS_EFORMAT, "%s:%llu: field %u (%s): %s '%s'", path,
                 (unsigned long long)line, f, what, msg, ps_log_escape(shown, sizeof shown, text, 24));
}

/* ctr_int parses field S (NUL-terminated) as a decimal integer. */
static int ctr_int(const char *s, double *v) {
  char *end;
  errno = 0;
  long long x = strtoll(s, &end, 10);
  if (end == s || *end || errno || (*s != '-' && (*s < '0' || *s > '9'))) return -1;
  *v = (double)x;
  return 0;
}

/* ctr_hex parses field S as 1 to 16 hexadecimal digits. */
static int ctr_hex(const char *s, uint64_t *v) {
  size_t n = strspn(s, "0123456789abcdefABCDEF");
  if (!n || n > 16 || s[n]) return -1;
  *v = strtoull(s, NULL, 16);
  return 0;
}

/* ctr_parse parses one line (NUL-terminated, no line end) as sample I. */
static int ctr_parse(psw_ctr *c, uint64_t i, char *p, const char *path, uint64_t line,
                     ps_errbuf *eb) {
  char *fields[CTR_NFIELDS];
  uint32_t nf = 0;
  for (char *q = p;; q++) {
    if (nf == CTR_NFIELDS)
      return ps_errf(eb, PS_EFORMAT, "%s:%llu: more than %d tab-separated fields", path,
                     (unsigned long long)line, CTR_NFIELDS);
    fields[nf++] = q;
    q = strchr(q, '\t');
    if (!q) break;
    *q = 0;
  }
  if (nf != CTR_NFIELDS)
    return ps_errf(eb, PS_EFORMAT, "%s:%llu: %u tab-separated fields, expected %d (label, %d integer, %d categorical)",
                   path, (unsigned long long)line, nf, CTR_NFIELDS, PSW_CTR_DENSE, PSW_CTR_FIELDS);
  if (strcmp(fields[0], "0") && strcmp(fields[0], "1"))
    return ctr_bad(eb, path, line, 1, "expected 0 or 1, got", fields[0]);
  c->label[i] = fields[0][0] - '0';
  for (uint32_t j = 0; j < PSW_CTR_DENSE; j++) {
    const char *s = fields[1 + j];
    double v = 0;
    if (*s && ctr_int(s, &v)) return ctr_bad(eb, path, line, 2 + j, "expected an integer, got", s);
    c->dense[i * PSW_CTR_DENSE + j] = (float)(v < 0 ? -log1p(-v) : log1p(v));
  }
  for (uint32_t f = 0; f < PSW_CTR_FIELDS; f++) {
    const char *s = fields[1 + PSW_CTR_DENSE + f];
    uint64_t id = UINT64_MAX;
    if (*s && ctr_hex(s, &id))
      return ctr_bad(eb, path, line, 2 + PSW_CTR_DENSE + f, "expected 1-16 hex digits, got", s);
    c->keys[i * PSW_CTR_FIELDS + f] = psw_ctr_key(f, id);
  }
  return 0;
}

/* ctr_read parses the lines of Z into C.  A gzip stream that ends early,
 * does not decode or has other bytes after it is psw_gz's error naming
 * the file: read on, a cut log would train as a shorter one, or fail on
 * its cut last line with a misleading field count. */
static int ctr_read(psw_ctr *c, psw_gz *z, const char *path, uint64_t limit, char *buf,
                    ps_errbuf *eb) {
  uint64_t line = 0, cap = 0;
  size_t got;
  int rc = 0;
  while ((!limit || c->n < limit) && !(rc = psw_gz_gets(z, buf, CTR_LINE_MAX + 2, &got, eb)) &&
         got) {
    line++;
    if (got == CTR_LINE_MAX + 1 && buf[got - 1] != '\n')
      return ps_errf(eb, PS_EFORMAT, "%s:%llu: line longer than %d bytes", path,
                     (unsigned long long)line, CTR_LINE_MAX);
    if (line == 1 && got >= 3 && !memcmp(buf, "\xef\xbb\xbf", 3)) /* a UTF-8 BOM, as CSV */
      memmove(buf, buf + 3, (got -= 3) + 1);
    /* a NUL byte would end the line early: "7<NUL>junk" read as 7, or a
     * field count that misleads */
    size_t len = strlen(buf);
    if (len < got)
      return ps_errf(eb, PS_EFORMAT, "%s:%llu: a NUL byte at column %zu (a Criteo log is text: "
                     "a binary or UTF-16 file?)", path, (unsigned long long)line, len + 1);
    if (len && buf[len - 1] == '\n') buf[--len] = 0;
    if (len && buf[len - 1] == '\r') buf[--len] = 0;
    if (!buf[strspn(buf, " ")]) continue;
    if (ctr_reserve(c, c->n + 1, &cap)) return ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
    if ((rc = ctr_parse(c, c->n, buf, path, line, eb))) break;
    c->n++;
  }
  return rc;
}

int psw_ctr_load(psw_ctr *c, const char *path, uint64_t limit, ps_errbuf *eb) {
  memset(c, 0, sizeof *c);
  psw_gz *z;
  int rc = psw_gz_open(&z, path, eb);
  if (rc < 0) return rc;
  char *buf = malloc(CTR_LINE_MAX + 2);
  rc = buf ? ctr_read(c, z, path, limit, buf, eb) : ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
  free(buf);
  psw_gz_close(z);
  if (rc) psw_ctr_release(c);
  return rc;
}
