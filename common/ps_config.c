/* ps_config: the cluster YAML file, loaded through declarative key tables.
 *
 * Design (nginx-style slots):
 *   1. Every mapping of the file is described by a cfg_table: a list of
 *      cfg_slot entries (key name, type, offset of the field, required,
 *      range, default written in file syntax).
 *   2. A type is a load function and a release function.  load(node=NULL)
 *      applies the slot's default, so defaults go through the same parser
 *      as the file and a table's release frees exactly what load stored.
 *   3. The first error stops the load; its message carries the 1-based
 *      line and column of the offending key or value (libyaml marks).
 * The libyaml document API is used: every node keeps its start mark, and
 * duplicate keys (which libyaml accepts) are found by the table loader. */
#include "ps_config.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "ps_addr.h"
#include "ps_pb.h"
#include "ps_place.h"

typedef struct cfg_ctx {
  const char *path;
  yaml_document_t *doc;
  ps_errbuf *eb;
  const unsigned char *buf; /* the file's text (cfg_v6_hint), LEN bytes */
  size_t len;
} cfg_ctx;

typedef struct cfg_slot cfg_slot;

typedef struct cfg_type {
  const char *what; /* "an integer": the wrong-type message */
  /* load stores node N (NULL: the slot's default) into FIELD. */
  int (*load)(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field);
  /* release frees what load stored in FIELD (NULL: nothing to free). */
  void (*release)(const cfg_slot *s, void *field);
  int number;       /* a quoted scalar ("5") is a string, not one of these */
} cfg_type;

struct cfg_slot {
  const char *name;
  const cfg_type *type;
  size_t offset;
  int required;
  const char *def;          /* default, in file syntax (NULL: zero / NULL) */
  uint64_t min, max;        /* integer range; list length range */
  double dmin, dmax;        /* number range */
  const void *arg;          /* enum names (NULL-terminated) or sub-table */
  const char *needs;        /* no default, required where its section's post check
                               says ("a path"): what an empty value lacks */
  /* check validates a string value TEXT (at mark M); 0 or PS_ECONFIG. */
  int (*check)(cfg_ctx *x, const cfg_slot *s, const char *text, yaml_mark_t m);
};

typedef struct cfg_table {
  const char *where;        /* "in 'durability'": for unknown/missing keys */
  const cfg_slot *slots;
  size_t nslots;
  /* post checks across keys once the mapping N is loaded into BASE;
   * MARKS[i] is slot i's value mark (or N's mark when absent). */
  int (*post)(cfg_ctx *x, void *base, yaml_node_t *n, const yaml_mark_t *marks);
} cfg_table;

#define CFG_MAX_SLOTS 16

/* cfg_err formats "PATH:LINE:COL: message" into the error buffer and
 * returns PS_ECONFIG. */
__attribute__((format(printf, 3, 4))) static int cfg_err(cfg_ctx *x, yaml_mark_t m,
                                                         const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return ps_errf(x->eb, PS_ECONFIG, "%s:%zu:%zu: %s", x->path, m.line + 1, m.column + 1, msg);
}

/* cfg_warn appends the line "PATH:LINE:COL: warning: message" to C's
 * warnings (cut at the buffer's end). */
__attribute__((format(printf, 4, 5))) static void cfg_warn(cfg_ctx *x, ps_config *c,
                                                           yaml_mark_t m, const char *fmt, ...) {
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t used = strlen(c->warning);
  snprintf(c->warning + used, sizeof c->warning - used, "%s%s:%zu:%zu: warning: %s",
           used ? "\n" : "", x->path, m.line + 1, m.column + 1, msg);
}

static yaml_node_t *cfg_node(cfg_ctx *x, int index) {
  return yaml_document_get_node(x->doc, index);
}

/* cfg_is_null says whether N is a YAML null (an empty or ~ plain scalar). */
static int cfg_is_null(const yaml_node_t *n) {
  if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
  const char *v = (const char *)n->data.scalar.value;
  return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") ||
         !strcmp(v, "NULL");
}

static const cfg_type cfg_t_enum;
static int cfg_check_oneof(cfg_ctx *x, const cfg_slot *s, const char *t, yaml_mark_t m);

/* cfg_choices writes the NULL-terminated NAMES as "a, b or c" into LIST. */
static const char *cfg_choices(const char *const *names, char *list, size_t cap) {
  size_t len = 0;
  list[0] = 0;
  for (int i = 0; names[i]; i++) {
    const char *sep = !i ? "" : names[i + 1] ? ", " : " or ";
    len += (size_t)snprintf(list + len, len < cap ? cap - len : 0, "%s%s", sep, names[i]);
  }
  return list;
}

static const char *const cfg_bools[] = {"false", "true", NULL}; /* enum of booleans */

/* cfg_empty refuses N, an empty value of slot S (README "Rules": never a
 * value), saying what to do instead: leaving the key out helps only a key
 * that has a default. */
static int cfg_empty(cfg_ctx *x, const cfg_slot *s, const yaml_node_t *n) {
  if (s->needs) return cfg_err(x, n->start_mark, "'%s' has an empty value (it needs %s)",
                               s->name, s->needs);
  return cfg_err(x, n->start_mark, "'%s' has an empty value (%s)", s->name,
                 s->required ? "it needs one" : "leave the key out to get its default");
}

/* cfg_scalar gives the text of N, or of the slot's default when N is NULL.
 * Returns 1 with *TEXT set, 0 when there is nothing to store (no default),
 * or PS_ECONFIG when N is not a non-null scalar (naming the choices of a
 * slot that has them). */
static int cfg_scalar(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, const char **text,
                      yaml_mark_t *m) {
  if (!n) {
    memset(m, 0, sizeof *m);
    *text = s->def;
    return s->def != NULL;
  }
  *m = n->start_mark;
  if (cfg_is_null(n)) return cfg_empty(x, s, n);
  if (n->type != YAML_SCALAR_NODE &&
      (s->type == &cfg_t_enum || s->check == cfg_check_oneof)) {
    char list[200];
    return cfg_err(x, n->start_mark, "expected one of %s for '%s'",
                   cfg_choices(s->arg, list, sizeof list), s->name);
  }
  if (n->type != YAML_SCALAR_NODE)
    return cfg_err(x, n->start_mark, "expected %s for '%s'", s->type->what, s->name);
  *text = (const char *)n->data.scalar.value;
  int quoted = n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
               n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
  if (quoted && (s->type->number || s->arg == cfg_bools)) /* YAML's "true" is a string */
    return cfg_err(x, n->start_mark, "expected %s for '%s', not the string '%s' (no quotes)",
                   s->type->number ? s->type->what : "true or false", s->name, *text);
  return 1;
}

/* ---- integers ---------------------------------------------------------- */

/* cfg_leading_zero says whether S holds a run of digits that starts with
 * 0 and goes on with a digit ("010", "-02.5", "1/02"), outside fractions
 * and exponents ("0.05", "1e05" are fine).  YAML 1.1 reads 010 as octal
 * 8 where psd would read 10, so psd reads neither. */
static int cfg_leading_zero(const char *s) {
  for (const char *p = s; *p; p++) {
    if (*p == 'e' || *p == 'E') p += strcspn(p, "/") - 1; /* (the exponent) */
    else if (*p == '0' && p[1] >= '0' && p[1] <= '9' &&
             (p == s || !strchr("0123456789.", p[-1])))
      return 1;
  }
  return 0;
}

/* ps_parse_uint: see ps_config.h. */
int ps_parse_uint(const char *s, uint64_t *v) {
  size_t nd = strspn(s, "0123456789");
  if (nd == 0 || s[nd] || (s[0] == '0' && nd > 1)) return PS_EINVAL;
  errno = 0;
  unsigned long long u = strtoull(s, NULL, 10);
  if (errno == ERANGE) return PS_ETOOBIG;
  *v = u;
  return 0;
}

/* cfg_no_leading_zero reports the slot's value T (at M) as written with
 * a leading zero. */
static int cfg_no_leading_zero(cfg_ctx *x, const cfg_slot *s, const char *t, yaml_mark_t m) {
  return cfg_err(x, m, "'%s' is %s: no leading zeros (YAML 1.1 would read it as octal)",
                 s->name, t);
}

/* cfg_uint parses N (or the default) as a decimal integer within the
 * slot's range into *V.  Returns 1, 0 (no value) or PS_ECONFIG. */
static int cfg_uint(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, uint64_t *v) {
  const char *t;
  yaml_mark_t m;
  int r = cfg_scalar(x, s, n, &t, &m);
  if (r <= 0) return r;
  uint64_t u = 0;
  int rc = ps_parse_uint(t + (*t == '-'), &u); /* a minus is reported as out of range */
  if (rc == PS_EINVAL && cfg_leading_zero(t) && strspn(t, "-0123456789") == strlen(t))
    return cfg_no_leading_zero(x, s, t, m);
  if (rc == PS_EINVAL) return cfg_err(x, m, "expected an integer for '%s'", s->name);
  int neg = *t == '-'; /* "-0" too: decimal, without sign */
  if (neg || rc < 0 || u < s->min || u > s->max)
    return cfg_err(x, m, "'%s' is %s, outside %" PRIu64 "..%" PRIu64, s->name, t, s->min,
                   s->max);
  *v = u;
  return 1;
}

static int cfg_load_u32(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field) {
  uint64_t v = 0;
  int r = cfg_uint(x, s, n, &v);
  if (r > 0) *(uint32_t *)field = (uint32_t)v;
  return r < 0 ? r : 0;
}

static int cfg_load_u64(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field) {
  uint64_t v = 0;
  int r = cfg_uint(x, s, n, &v);
  if (r > 0) *(uint64_t *)field = v;
  return r < 0 ? r : 0;
}

/* ---- numbers: decimal, exponent, or a fraction "A/B" ------------------- */

/* ps_parse_number: see ps_config.h.  strtod alone would also take hex
 * ("0x10"), "inf", "nan" and leading blanks. */
int ps_parse_number(const char *s, double *v) {
  char *end;
  if (s[strspn(s, "0123456789.eE+-/")] || cfg_leading_zero(s)) return PS_EINVAL;
  errno = 0;
  double a = strtod(s, &end), b = 1;
  int range = errno == ERANGE; /* strtod saturates: HUGE_VAL, or 0 and subnormals */
  if (end == s) return PS_EINVAL;
  if (*end == '/') {
    const char *b0 = end + 1;
    errno = 0;
    b = strtod(b0, &end);
    if (end == b0 || (b == 0 && errno != ERANGE)) return PS_EINVAL;
    range |= errno == ERANGE;
  }
  if (*end) return PS_EINVAL;
  double q = a / b; /* (b is 0 only after an underflow) */
  if (isnan(q)) q = HUGE_VAL; /* inf/inf, 0/0: both parts out of range, called too large */
  if (isinf(q) || (q != 0 && fabs(q) < DBL_MIN) || (q == 0 && a != 0)) range = 1;
  if (range) {
    *v = isinf(q) ? q : copysign(0, q);
    return PS_ETOOBIG;
  }
  *v = q;
  return 0;
}

/* ---- command-line flags: the same rules, with the reason said --------- */

/* flag_uint_why parses ARG into *V within [MIN, MAX]; NULL, or why not.
 * A minus before digits is out of range, as in the file (cfg_uint). */
static const char *flag_uint_why(const char *arg, uint64_t min, uint64_t max, uint64_t *v,
                                 char *fix, size_t fixlen) {
  int neg = *arg == '-';
  int rc = ps_parse_uint(arg + neg, v);
  if (rc == PS_EINVAL && cfg_leading_zero(arg) && strspn(arg, "-0123456789") == strlen(arg)) {
    const char *d = arg + neg + strspn(arg + neg, "0");
    snprintf(fix, fixlen, "a leading zero (write %s%s)", neg ? "-" : "", *d ? d : "0");
    return fix;
  }
  if (rc == PS_EINVAL) return "not an integer (decimal digits only)";
  if (neg || rc < 0 || *v < min || *v > max) return "out of range";
  return NULL;
}

/* ps_flag_uint: see ps_config.h. */
int ps_flag_uint(const char *flag, const char *arg, uint64_t min, uint64_t max, uint64_t *v,
                 ps_errbuf *eb) {
  uint64_t u = 0;
  char fix[128];
  const char *why = flag_uint_why(arg, min, max, &u, fix, sizeof fix);
  if (why)
    return ps_errf(eb, PS_EINVAL, "%s wants an integer in [%" PRIu64 ", %" PRIu64 "], got '%s': %s",
                   flag, min, max, arg, why);
  *v = u;
  return 0;
}

/* flag_number_why parses ARG into *V within [MIN, MAX]; NULL, or why not. */
static const char *flag_number_why(const char *arg, double min, double max, double *v) {
  int rc = ps_parse_number(arg, v);
  if (rc == PS_EINVAL && cfg_leading_zero(arg) &&
      strspn(arg, "0123456789.eE+-/") == strlen(arg))
    return "a leading zero in an integer part (write it without: numbers are decimal)";
  if (rc == PS_EINVAL)
    return "not a number (a decimal such as 0.5 or 3.9e-3, or a fraction such as 1/255)";
  if (rc == PS_ETOOBIG && *v == 0 && min <= 0 && max >= 0)
    return "nearer 0 than a double holds (write 0)";
  if (rc == PS_ETOOBIG) return "out of range (beyond a double)";
  if (*arg == '+' && min >= 0) return "a sign (write it without)";
  if (!(*v >= min && *v <= max) || (*arg == '-' && min >= 0)) return "out of range";
  return NULL;
}

/* ps_flag_number: see ps_config.h. */
int ps_flag_number(const char *flag, const char *arg, double min, double max, double *v,
                   ps_errbuf *eb) {
  double x = 0;
  const char *why = flag_number_why(arg, min, max, &x);
  if (!why) {
    *v = x;
    return 0;
  }
  if (min == -DBL_MAX && max == DBL_MAX)
    return ps_errf(eb, PS_EINVAL, "%s wants a number, got '%s': %s", flag, arg, why);
  if (max == DBL_MAX)
    return ps_errf(eb, PS_EINVAL, "%s wants a number >= %g, got '%s': %s", flag, min, arg, why);
  return ps_errf(eb, PS_EINVAL, "%s wants a number in [%g, %g], got '%s': %s", flag, min, max,
                 arg, why);
}

static int cfg_load_double(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field) {
  const char *t = NULL;
  yaml_mark_t m;
  int r = cfg_scalar(x, s, n, &t, &m);
  if (r <= 0) return r;
  double v = 0;
  int rc = ps_parse_number(t, &v);
  if (rc == PS_EINVAL && cfg_leading_zero(t) && strspn(t, "0123456789.eE+-/") == strlen(t))
    return cfg_no_leading_zero(x, s, t, m);
  if (rc == PS_EINVAL) return cfg_err(x, m, "expected a number for '%s'", s->name);
  /* beyond a double: too large is outside any range; too near 0 is
   * outside one that starts above 0 */
  if (rc == PS_ETOOBIG && v == 0 && s->dmin <= 0)
    return cfg_err(x, m, "'%s' is %s, nearer 0 than a double holds (write 0)", s->name, t);
  if (rc < 0 || !(v >= s->dmin && v <= s->dmax))
    return cfg_err(x, m, "'%s' is %s, outside %g..%g", s->name, t, s->dmin, s->dmax);
  *(double *)field = v;
  return 0;
}

/* A list of numbers: a double array and, right behind it in the struct,
 * its length (size_t).  Each item is checked against dmin..dmax; the
 * list's length against min..max.  No default (absent: empty). */
typedef struct cfg_numlist {
  double *v;
  size_t n;
} cfg_numlist;

static int cfg_load_numlist(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field) {
  if (!n) return 0;
  if (cfg_is_null(n)) return cfg_empty(x, s, n);
  if (n->type != YAML_SEQUENCE_NODE)
    return cfg_err(x, n->start_mark, "expected a list of numbers for '%s'", s->name);
  size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
  if (count < s->min || count > s->max)
    return cfg_err(x, n->start_mark, "'%s' has %zu entries, expected %" PRIu64 "..%" PRIu64,
                   s->name, count, s->min, s->max);
  double *v = calloc(count ? count : 1, sizeof *v);
  if (!v) return ps_errf(x->eb, PS_ENOMEM, "%s: out of memory", x->path);
  for (size_t i = 0; i < count; i++) {
    int r = cfg_load_double(x, s, cfg_node(x, n->data.sequence.items.start[i]), &v[i]);
    if (r < 0) {
      free(v);
      return r;
    }
  }
  cfg_numlist *l = field;
  free(l->v);
  l->v = v;
  l->n = count;
  return 0;
}

static void cfg_release_numlist(const cfg_slot *s, void *field) {
  (void)s;
  cfg_numlist *l = field;
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

/* ---- strings and enums ------------------------------------------------- */

static int cfg_load_str(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field) {
  const char *t;
  yaml_mark_t m;
  int r = cfg_scalar(x, s, n, &t, &m);
  if (r <= 0) return r;
  if (!*t) return cfg_err(x, m, "empty string for '%s'", s->name);
  if (s->check && (r = s->check(x, s, t, m)) < 0) return r;
  char *dup = strdup(t);
  if (!dup) return ps_errf(x->eb, PS_ENOMEM, "%s: out of memory", x->path);
  free(*(char **)field);
  *(char **)field = dup;
  return 0;
}

static void cfg_release_str(const cfg_slot *s, void *field) {
  (void)s;
  free(*(char **)field);
  *(char **)field = NULL;
}

/* cfg_oneof returns the index of T in the NULL-terminated NAMES, or -1. */
static int cfg_oneof(const char *const *names, const char *t) {
  for (int i = 0; names[i]; i++)
    if (!strcmp(names[i], t)) return i;
  return -1;
}

/* cfg_bad_choice reports T as not one of the slot's names. */
static int cfg_bad_choice(cfg_ctx *x, const cfg_slot *s, const char *t, yaml_mark_t m) {
  char list[200];
  return cfg_err(x, m, "unknown value '%s' for '%s' (expected %s)", t, s->name,
                 cfg_choices(s->arg, list, sizeof list));
}

/* cfg_check_oneof: a string slot whose value is one of s->arg. */
static int cfg_check_oneof(cfg_ctx *x, const cfg_slot *s, const char *t, yaml_mark_t m) {
  return cfg_oneof(s->arg, t) < 0 ? cfg_bad_choice(x, s, t, m) : 0;
}

/* cfg_load_enum stores the index of the value within s->arg as an int. */
static int cfg_load_enum(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field) {
  const char *t;
  yaml_mark_t m;
  int r = cfg_scalar(x, s, n, &t, &m);
  if (r <= 0) return r;
  int i = cfg_oneof(s->arg, t);
  if (i < 0) return cfg_bad_choice(x, s, t, m);
  *(int *)field = i;
  return 0;
}

/* cfg_check_hostport accepts "host:port" and "[v6addr]:port", port 1..65535. */
static int cfg_check_hostport(cfg_ctx *x, const cfg_slot *s, const char *t, yaml_mark_t m) {
  char host[256];
  int port;
  ps_errbuf eb;
  int ok = ps_addr_split(t, host, sizeof host, &port, &eb) == 0;
  /* ps_addr_split's own reason where it names one: "('HOST' is no IPv4
   * address)", "(07000 has a leading zero: write 7000)"; neither holds a '(' */
  const char *why = ok ? NULL : strrchr(eb.msg, '(');
  if (why && (strstr(why, " is no IPv") || strstr(why, " leading zero")))
    return cfg_err(x, m, "bad address '%s' for '%s' %s", t, s->name, why);
  if (!ok)
    return cfg_err(x, m, "bad address '%s' for '%s' (expected host:port, port 1..65535)", t,
                   s->name);
  return 0;
}

/* ps_device_parse: see ps_config.h.  Digits are counted, not converted
 * first, so that no spelling strtol would take ("+1", " 1", "-0", "01")
 * and no overflow gets through. */
int ps_device_parse(const char *device, int *ordinal, ps_errbuf *eb) {
  int ord = 0;
  if (!device) device = "auto";
  if (!strcmp(device, "cpu")) ord = -1;
  else if (strcmp(device, "auto") && strcmp(device, "cuda")) {
    if (strncmp(device, "cuda:", 5))
      return ps_errf(eb, PS_EINVAL, "unknown device '%s' (expected %s)", device, PS_DEVICE_RULE);
    const char *n = device + 5;
    size_t len = strspn(n, "0123456789");
    _Static_assert(PS_DEVICE_MAX_ORDINAL == 999, "the digit count below is the range check");
    if (!len || n[len] || (n[0] == '0' && len > 1) || len > 3)
      return ps_errf(eb, PS_EINVAL,
                     "device '%s': expected cuda:N with N a device number from 0 to %d, "
                     "no leading zeros",
                     device, PS_DEVICE_MAX_ORDINAL);
    ord = atoi(n);
  }
  if (ordinal) *ordinal = ord;
  return 0;
}

/* cfg_check_device takes the devices psw takes (ps_device_parse), and
 * refuses the others with psw's message. */
static int cfg_check_device(cfg_ctx *x, const cfg_slot *s, const char *t, yaml_mark_t m) {
  (void)s;
  ps_errbuf eb;
  if (ps_device_parse(t, NULL, &eb) == 0) return 0;
  return cfg_err(x, m, "%s", eb.msg);
}

/* cfg_check_name: the cluster name travels in the channel hello. */
static int cfg_check_name(cfg_ctx *x, const cfg_slot *s, const char *t, yaml_mark_t m) {
  if (!ps_name_valid(t))
    return cfg_err(x, m, "bad name '%s' for '%s' (1-63 letters, digits, '.', '_', '-')", t,
                   s->name);
  return 0;
}

/* ---- tables and sections ----------------------------------------------- */

/* cfg_release_table frees every field of BASE that TABLE's slots own. */
static void cfg_release_table(const cfg_table *t, void *base) {
  for (size_t i = 0; i < t->nslots; i++)
    if (t->slots[i].type->release)
      t->slots[i].type->release(&t->slots[i], (char *)base + t->slots[i].offset);
}

/* cfg_find_slot returns the slot named NAME in T, or -1. */
static int cfg_find_slot(const cfg_table *t, const char *name) {
  for (size_t i = 0; i < t->nslots; i++)
    if (!strcmp(t->slots[i].name, name)) return (int)i;
  return -1;
}

/* cfg_load_pairs loads every key of mapping N into BASE, recording each
 * slot's key mark in KEYS and value mark in MARKS and setting SEEN. */
static int cfg_load_pairs(cfg_ctx *x, const cfg_table *t, yaml_node_t *n, void *base,
                          int *seen, yaml_mark_t *keys, yaml_mark_t *marks) {
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *k = cfg_node(x, p->key), *v = cfg_node(x, p->value);
    if (k->type != YAML_SCALAR_NODE) return cfg_err(x, k->start_mark, "expected a key name");
    const char *name = (const char *)k->data.scalar.value;
    int i = cfg_find_slot(t, name);
    if (i < 0) return cfg_err(x, k->start_mark, "unknown key '%s' %s", name, t->where);
    if (seen[i])
      return cfg_err(x, k->start_mark, "duplicate key '%s' (first at line %zu)", name,
                     keys[i].line + 1);
    seen[i] = 1;
    keys[i] = k->start_mark;
    marks[i] = v->start_mark;
    int r = t->slots[i].type->load(x, &t->slots[i], v, (char *)base + t->slots[i].offset);
    if (r < 0) return r;
  }
  return 0;
}

/* cfg_load_table loads mapping N (NULL: an absent section, all defaults;
 * a scalar: the value of T's 'mode' key) into BASE by T, then applies
 * defaults and checks required keys.  MARKS (T->nslots entries, may be
 * NULL) receives each slot's value mark.
 * Returns 0 or a PS_E* code; on error the caller releases BASE. */
static int cfg_load_table(cfg_ctx *x, const cfg_table *t, yaml_node_t *n, void *base,
                          yaml_mark_t *marks) {
  int seen[CFG_MAX_SLOTS] = {0};
  yaml_mark_t keys[CFG_MAX_SLOTS], own[CFG_MAX_SLOTS];
  if (!marks) marks = own;
  int r;
  if (n && n->type == YAML_SCALAR_NODE) { /* the shorthand "section: MODE" (cfg_load_section) */
    int i = cfg_find_slot(t, "mode");
    if (i < 0) return cfg_err(x, n->start_mark, "expected a mapping");
    seen[i] = 1;
    marks[i] = n->start_mark;
    if ((r = t->slots[i].type->load(x, &t->slots[i], n, (char *)base + t->slots[i].offset)) < 0)
      return r;
  } else if (n && (r = cfg_load_pairs(x, t, n, base, seen, keys, marks)) < 0) {
    return r;
  }
  yaml_mark_t here = n ? n->start_mark : (yaml_mark_t){0, 0, 0};
  for (size_t i = 0; i < t->nslots; i++) {
    if (seen[i]) continue;
    marks[i] = here;
    if (t->slots[i].required)
      return cfg_err(x, here, "missing required key '%s' %s", t->slots[i].name, t->where);
    r = t->slots[i].type->load(x, &t->slots[i], NULL, (char *)base + t->slots[i].offset);
    if (r < 0) return r;
  }
  return t->post ? t->post(x, base, n, marks) : 0;
}

/* cfg_load_section loads section N into FIELD.  A section with a 'mode'
 * key may be written as its mode alone ("durability: sync" is
 * "durability: {mode: sync}"); another scalar is refused with a hint. */
static int cfg_load_section(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field) {
  const cfg_table *t = s->arg;
  int mode = cfg_find_slot(t, "mode");
  char list[200] = "";
  if (mode >= 0) cfg_choices(t->slots[mode].arg, list, sizeof list);
  if (n && n->type == YAML_SCALAR_NODE && !cfg_is_null(n)) {
    const char *v = (const char *)n->data.scalar.value;
    if (mode >= 0 && cfg_oneof(t->slots[mode].arg, v) >= 0)
      return cfg_load_table(x, t, n, field, NULL);
    if (mode >= 0)
      return cfg_err(x, n->start_mark, "unknown value '%s' for '%s' (expected %s, or a mapping "
                     "of its keys on the lines below it, indented)", v, s->name, list);
    return cfg_err(x, n->start_mark, "expected a mapping for '%s', got the value '%s' (a "
                   "section's keys go on the lines below it, indented)", s->name, v);
  }
  if (n && n->type == YAML_SCALAR_NODE) /* empty: no keys below it */
    return cfg_err(x, n->start_mark, "expected a mapping for '%s', got nothing (its keys go on "
                   "the lines below it, indented%s%s)", s->name, mode >= 0 ? "; or one of " : "",
                   list);
  if (n && n->type != YAML_MAPPING_NODE)
    return cfg_err(x, n->start_mark, "expected a mapping for '%s'", s->name);
  return cfg_load_table(x, t, n, field, NULL);
}

static void cfg_release_section(const cfg_slot *s, void *field) {
  cfg_release_table(s->arg, field);
}

static const cfg_type cfg_t_u32 = {.what = "an integer", .load = cfg_load_u32, .number = 1};
static const cfg_type cfg_t_u64 = {.what = "an integer", .load = cfg_load_u64, .number = 1};
static const cfg_type cfg_t_double = {.what = "a number", .load = cfg_load_double, .number = 1};
static const cfg_type cfg_t_str = {.what = "a string", .load = cfg_load_str,
                                   .release = cfg_release_str};
static const cfg_type cfg_t_enum = {.what = "a string", .load = cfg_load_enum};
static const cfg_type cfg_t_numlist = {.what = "a list of numbers", .load = cfg_load_numlist,
                                       .release = cfg_release_numlist, .number = 1 /* items */};
static const cfg_type cfg_t_section = {.what = "a mapping", .load = cfg_load_section,
                                       .release = cfg_release_section};

#define CFG_TABLE(where, slots, post) {where, slots, sizeof slots / sizeof slots[0], post}

/* ---- sections ---------------------------------------------------------- */

static const char *const cfg_durability_modes[] = {"periodic", "sync", NULL};
static const char *const cfg_consistencies[] = {"bsp", "ssp", "asp", NULL};
static const char *const cfg_staleness_weights[] = {"none", "inverse", NULL};
static const char *const cfg_formats[] = {"idx", "csv", "criteo", NULL};
/* ps_codec.h's names (push: any; pull: values only) */
static const char *const cfg_push_codecs[] = {"fp32", "fp16", "int8", "onebit", "topk", NULL};
static const char *const cfg_pull_codecs[] = {"fp32", "fp16", "int8", NULL};
static const char *const cfg_sparse_planes[] = {"channel", "grpc", NULL}; /* ps_sparse_plane */

static const cfg_slot cfg_durability_slots[] = {
    {.name = "mode", .type = &cfg_t_enum, .offset = offsetof(ps_config, durability),
     .def = "periodic", .arg = cfg_durability_modes},
    {.name = "flush_interval_ms", .type = &cfg_t_u32,
     .offset = offsetof(ps_config, flush_interval_ms), .def = "1000", .min = 1, .max = 3600000},
    {.name = "group_commit_max_bytes", .type = &cfg_t_u64,
     .offset = offsetof(ps_config, group_commit_max_bytes),
     .def = PS_CONFIG_STR(PS_GROUP_COMMIT_MAX_BYTES_DEF), .min = 4096,
     .max = 1073741824},
    {.name = "group_commit_max_wait_us", .type = &cfg_t_u32,
     .offset = offsetof(ps_config, group_commit_max_wait_us),
     .def = PS_CONFIG_STR(PS_GROUP_COMMIT_MAX_WAIT_US_DEF), .min = 0,
     .max = 1000000},
};

static const cfg_slot cfg_limits_slots[] = {
    {.name = "max_request_bytes", .type = &cfg_t_u64,
     .offset = offsetof(ps_config, max_request_bytes), .def = "268435456", .min = 1024,
     .max = PS_CONFIG_MAX_REQUEST_BYTES},
    {.name = "drain_timeout_ms", .type = &cfg_t_u32,
     .offset = offsetof(ps_config, drain_timeout_ms), .def = "5000", .min = 0, .max = 600000},
    {.name = "max_connections", .type = &cfg_t_u32,
     .offset = offsetof(ps_config, max_connections), .def = "1024", .min = 1, .max = 1000000},
    {.name = "idle_timeout_ms", .type = &cfg_t_u32,
     .offset = offsetof(ps_config, idle_timeout_ms), .def = "120000", .min = 1000,
     .max = 86400000},
    {.name = "max_queued_bytes", .type = &cfg_t_u64,
     .offset = offsetof(ps_config, max_queued_bytes), .def = "268435456", .min = 1048576,
     .max = UINT64_C(1) << 40},
    {.name = "max_shard_bytes", .type = &cfg_t_u64,
     .offset = offsetof(ps_config, max_shard_bytes), .def = "0", .min = 0,
     .max = UINT64_C(1) << 50},
};

static const cfg_slot cfg_shard_slots[] = {
    {.name = "id", .type = &cfg_t_u32, .offset = offsetof(ps_shard_conf, id), .required = 1,
     .min = 0, .max = 65535},
    {.name = "grpc", .type = &cfg_t_str, .offset = offsetof(ps_shard_conf, grpc_addr),
     .required = 1, .check = cfg_check_hostport},
    {.name = "channel", .type = &cfg_t_str, .offset = offsetof(ps_shard_conf, channel_addr),
     .required = 1, .check = cfg_check_hostport},
    {.name = "data_dir", .type = &cfg_t_str, .offset = offsetof(ps_shard_conf, data_dir),
     .required = 1},
};
enum { CFG_SHARD_ID, CFG_SHARD_GRPC, CFG_SHARD_CHANNEL, CFG_SHARD_DATA_DIR, CFG_SHARD_NSLOTS };
static const cfg_table cfg_shard_table = CFG_TABLE("in a 'shards' entry", cfg_shard_slots, NULL);


/* An aggregator (DESIGN.md "Hierarchy"): psd --aggregator NAME. */
static const cfg_slot cfg_agg_slots[] = {
    {.name = "name", .type = &cfg_t_str, .offset = offsetof(ps_agg_conf, name), .required = 1,
     .check = cfg_check_name},
    {.name = "grpc", .type = &cfg_t_str, .offset = offsetof(ps_agg_conf, grpc_addr),
     .required = 1, .check = cfg_check_hostport},
    {.name = "channel", .type = &cfg_t_str, .offset = offsetof(ps_agg_conf, channel_addr),
     .required = 1, .check = cfg_check_hostport},
    {.name = "workers", .type = &cfg_t_u32, .offset = offsetof(ps_agg_conf, workers),
     .required = 1, .min = 1, .max = 4096},
    {.name = "max_delay_ms", .type = &cfg_t_u32, .offset = offsetof(ps_agg_conf, max_delay_ms),
     .def = "20", .min = 0, .max = 60000},
};
enum { CFG_AGG_NAME, CFG_AGG_GRPC, CFG_AGG_CHANNEL };
static const cfg_table cfg_agg_table = CFG_TABLE("in an 'aggregators' entry", cfg_agg_slots, NULL);

static const cfg_slot cfg_workers_slots[] = {
    {.name = "count", .type = &cfg_t_u32, .offset = offsetof(ps_worker_conf, count),
     .def = "1", .min = 1, .max = 4096},
    {.name = "min", .type = &cfg_t_u32, .offset = offsetof(ps_worker_conf, min),
     .def = "0", .min = 0, .max = 4096},
    {.name = "device", .type = &cfg_t_str, .offset = offsetof(ps_worker_conf, device),
     .def = "auto", .check = cfg_check_device},
    {.name = "retry_ms", .type = &cfg_t_u32, .offset = offsetof(ps_worker_conf, retry_ms),
     .def = "30000", .min = 0, .max = 86400000},
    {.name = "overlap", .type = &cfg_t_enum, .offset = offsetof(ps_worker_conf, overlap),
     .def = "false", .arg = cfg_bools},
    {.name = "blas_threads", .type = &cfg_t_u32,
     .offset = offsetof(ps_worker_conf, blas_threads), .def = "1", .min = 1, .max = 256},
    {.name = "coordinator", .type = &cfg_t_u32, .offset = offsetof(ps_worker_conf, coordinator),
     .def = "0", .min = 0, .max = 65535},
    {.name = "heartbeat_ms", .type = &cfg_t_u32,
     .offset = offsetof(ps_worker_conf, heartbeat_ms), .def = "1000", .min = 10, .max = 3600000},
    {.name = "lease_ms", .type = &cfg_t_u32, .offset = offsetof(ps_worker_conf, lease_ms),
     .def = "5000", .min = 20, .max = 86400000},
    {.name = "slowdown", .type = &cfg_t_numlist, .offset = offsetof(ps_worker_conf, slowdown),
     .min = 0, .max = 4096, .dmin = 1, .dmax = 1000},
    {.name = "jitter_prob", .type = &cfg_t_double, .offset = offsetof(ps_worker_conf, jitter_prob),
     .def = "0", .dmin = 0, .dmax = 1},
    {.name = "jitter_factor", .type = &cfg_t_double,
     .offset = offsetof(ps_worker_conf, jitter_factor), .def = "1", .dmin = 1, .dmax = 1000},
    {.name = "aggregator", .type = &cfg_t_str, .offset = offsetof(ps_worker_conf, aggregator),
     .check = cfg_check_name},
    {.name = "shared_memory", .type = &cfg_t_enum,
     .offset = offsetof(ps_worker_conf, shared_memory), .def = "true", .arg = cfg_bools},
};

_Static_assert(offsetof(ps_worker_conf, nslowdown) ==
                   offsetof(ps_worker_conf, slowdown) + offsetof(cfg_numlist, n),
               "workers.slowdown is a cfg_numlist");

static const cfg_slot cfg_training_slots[] = {
    {.name = "model", .type = &cfg_t_str, .offset = offsetof(ps_train_conf, model),
     .check = cfg_check_name},
    {.name = "epochs", .type = &cfg_t_u32, .offset = offsetof(ps_train_conf, epochs),
     .def = "10", .min = 1, .max = 100000},
    {.name = "batch_size", .type = &cfg_t_u32, .offset = offsetof(ps_train_conf, batch_size),
     .def = "64", .min = 1, .max = 1048576},
    {.name = "seed", .type = &cfg_t_u64, .offset = offsetof(ps_train_conf, seed), .def = "1",
     .min = 0, .max = UINT64_MAX},
    {.name = "consistency", .type = &cfg_t_str, .offset = offsetof(ps_train_conf, consistency),
     .def = "asp", .arg = cfg_consistencies, .check = cfg_check_oneof},
    {.name = "staleness", .type = &cfg_t_u32, .offset = offsetof(ps_train_conf, staleness),
     .def = "0", .min = 0, .max = 1000000},
    {.name = "staleness_weight", .type = &cfg_t_str,
     .offset = offsetof(ps_train_conf, staleness_weight), .def = "none",
     .arg = cfg_staleness_weights, .check = cfg_check_oneof},
    {.name = "pull_timeout_ms", .type = &cfg_t_u32,
     .offset = offsetof(ps_train_conf, pull_timeout_ms), .def = "30000", .min = 1,
     .max = 86400000},
    {.name = "codec", .type = &cfg_t_str, .offset = offsetof(ps_train_conf, codec),
     .def = "fp32", .arg = cfg_push_codecs, .check = cfg_check_oneof},
    {.name = "pull_codec", .type = &cfg_t_str, .offset = offsetof(ps_train_conf, pull_codec),
     .def = "fp32", .arg = cfg_pull_codecs, .check = cfg_check_oneof},
    {.name = "topk", .type = &cfg_t_double, .offset = offsetof(ps_train_conf, topk),
     .def = "0.01", .dmin = 1e-6, .dmax = 1},
    {.name = "codec_warmup_steps", .type = &cfg_t_u32,
     .offset = offsetof(ps_train_conf, codec_warmup_steps), .def = "0", .min = 0,
     .max = UINT32_MAX},
    {.name = "codec_min_elems", .type = &cfg_t_u32,
     .offset = offsetof(ps_train_conf, codec_min_elems), .def = "1024", .min = 1,
     .max = UINT32_MAX},
};

static const cfg_slot cfg_data_slots[] = {
    {.name = "format", .type = &cfg_t_str, .offset = offsetof(ps_data_conf, format),
     .def = "idx", .arg = cfg_formats, .check = cfg_check_oneof},
    {.name = "train_images", .type = &cfg_t_str, .offset = offsetof(ps_data_conf, train_images)},
    {.name = "train_labels", .type = &cfg_t_str, .offset = offsetof(ps_data_conf, train_labels)},
    {.name = "test_images", .type = &cfg_t_str, .offset = offsetof(ps_data_conf, test_images)},
    {.name = "test_labels", .type = &cfg_t_str, .offset = offsetof(ps_data_conf, test_labels)},
    {.name = "scale", .type = &cfg_t_double, .offset = offsetof(ps_data_conf, scale),
     .def = "1/255", .dmin = 1e-9, .dmax = 1e9},
    {.name = "partitions", .type = &cfg_t_u32, .offset = offsetof(ps_data_conf, partitions),
     .def = "16", .min = 1, .max = 65536},
    {.name = "limit", .type = &cfg_t_u32, .offset = offsetof(ps_data_conf, limit), .def = "0",
     .min = 0, .max = UINT32_MAX},
};
enum { CFG_DATA_FORMAT, CFG_DATA_TRAIN_IMAGES, CFG_DATA_TRAIN_LABELS, CFG_DATA_TEST_IMAGES,
       CFG_DATA_TEST_LABELS };

/* cfg_data_post: idx data sets come as image/label file pairs; csv and
 * criteo files hold their labels in the first column. */
static int cfg_data_post(cfg_ctx *x, void *base, yaml_node_t *n, const yaml_mark_t *marks) {
  ps_data_conf *d = base;
  static const struct { int images, labels; } pairs[] = {
      {CFG_DATA_TRAIN_IMAGES, CFG_DATA_TRAIN_LABELS},
      {CFG_DATA_TEST_IMAGES, CFG_DATA_TEST_LABELS}};
  char **field[] = {[CFG_DATA_TRAIN_IMAGES] = &d->train_images,
                    [CFG_DATA_TRAIN_LABELS] = &d->train_labels,
                    [CFG_DATA_TEST_IMAGES] = &d->test_images,
                    [CFG_DATA_TEST_LABELS] = &d->test_labels};
  int csv = strcmp(d->format, "idx") != 0; /* csv or criteo: one file per set */
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    const char *img = cfg_data_slots[pairs[i].images].name;
    const char *lab = cfg_data_slots[pairs[i].labels].name;
    if (csv && *field[pairs[i].labels])
      return cfg_err(x, marks[pairs[i].labels],
                     "'%s' is for format 'idx' (%s files hold the label in column 1)", lab,
                     d->format);
    if (!csv && (!*field[pairs[i].images]) != (!*field[pairs[i].labels]))
      return cfg_err(x, n ? n->start_mark : marks[0], "'%s' and '%s' go together in 'data'",
                     img, lab);
  }
  /* a scale criteo's features do not take (they are log-scaled) */
  size_t sc = 0;
  while (strcmp(cfg_data_slots[sc].name, "scale")) sc++;
  if (n && marks[sc].index != n->start_mark.index && !strcmp(d->format, "criteo"))
    cfg_warn(x, (ps_config *)((char *)base - offsetof(ps_config, data)), marks[sc],
             "'scale' does not apply to format 'criteo' (its integer features are taken as "
             "sign(x) log(1 + |x|))");
  /* fewer samples than partitions: some partitions hold none */
  size_t lim = 0;
  while (strcmp(cfg_data_slots[lim].name, "limit")) lim++;
  if (d->limit && d->limit < d->partitions)
    cfg_warn(x, (ps_config *)((char *)base - offsetof(ps_config, data)), marks[lim],
             "'limit' (%" PRIu32 ") is below 'partitions' (%" PRIu32 "): %" PRIu32
             " partitions hold no sample", d->limit, d->partitions, d->partitions - d->limit);
  return 0;
}

static yaml_node_t *cfg_value_node(cfg_ctx *x, yaml_node_t *n, const char *key);

/* ---- security ------------------------------------------------------------ */

static const char *const cfg_sec_modes[] = {"none", "tls", NULL};

static const cfg_slot cfg_tls_slots[] = {
    /* required by cfg_tls_post, not here: an absent 'tls' is loaded too */
    {.name = "ca", .type = &cfg_t_str, .offset = offsetof(ps_tls_conf, ca), .needs = "a path"},
    {.name = "cert", .type = &cfg_t_str, .offset = offsetof(ps_tls_conf, cert),
     .needs = "a path"},
    {.name = "key", .type = &cfg_t_str, .offset = offsetof(ps_tls_conf, key), .needs = "a path"},
    {.name = "worker_cert", .type = &cfg_t_str, .offset = offsetof(ps_tls_conf, worker_cert)},
    {.name = "worker_key", .type = &cfg_t_str, .offset = offsetof(ps_tls_conf, worker_key)},
    {.name = "operator_cert", .type = &cfg_t_str, .offset = offsetof(ps_tls_conf, operator_cert)},
    {.name = "operator_key", .type = &cfg_t_str, .offset = offsetof(ps_tls_conf, operator_key)},
};
enum { CFG_TLS_CA, CFG_TLS_CERT, CFG_TLS_KEY, CFG_TLS_WCERT, CFG_TLS_WKEY, CFG_TLS_OCERT,
       CFG_TLS_OKEY };

/* cfg_tls_post: the shard's own pair is needed by psd; a client pair
 * comes whole or not at all. */
static int cfg_tls_post(cfg_ctx *x, void *base, yaml_node_t *n, const yaml_mark_t *marks) {
  ps_tls_conf *t = base;
  if (!n) return 0; /* absent: cfg_security_post decides */
  yaml_mark_t at = n->start_mark;
  static const int need[] = {CFG_TLS_CA, CFG_TLS_CERT, CFG_TLS_KEY};
  char *const *have[] = {&t->ca, &t->cert, &t->key};
  for (size_t i = 0; i < 3; i++)
    if (!*have[i])
      return cfg_err(x, at, "missing required key '%s' in 'security.tls'",
                     cfg_tls_slots[need[i]].name);
  if (!t->worker_cert != !t->worker_key)
    return cfg_err(x, marks[t->worker_cert ? CFG_TLS_WCERT : CFG_TLS_WKEY],
                   "'worker_cert' and 'worker_key' go together in 'security.tls'");
  if (!t->operator_cert != !t->operator_key)
    return cfg_err(x, marks[t->operator_cert ? CFG_TLS_OCERT : CFG_TLS_OKEY],
                   "'operator_cert' and 'operator_key' go together in 'security.tls'");
  return 0;
}
static const cfg_table cfg_tls_table = CFG_TABLE("in 'security.tls'", cfg_tls_slots, cfg_tls_post);

static const cfg_slot cfg_security_slots[] = {
    {.name = "mode", .type = &cfg_t_enum, .offset = offsetof(ps_security_conf, mode),
     .required = 1, .arg = cfg_sec_modes},
    {.name = "tls", .type = &cfg_t_section, .offset = offsetof(ps_security_conf, tls),
     .arg = &cfg_tls_table},
    {.name = "require_client_cert", .type = &cfg_t_enum,
     .offset = offsetof(ps_security_conf, require_client_cert), .def = "true",
     .arg = cfg_bools},
    {.name = "secret_file", .type = &cfg_t_str, .offset = offsetof(ps_security_conf, secret_file)},
    {.name = "payload_mac", .type = &cfg_t_enum, .offset = offsetof(ps_security_conf, payload_mac),
     .def = "false", .arg = cfg_bools},
};
enum { CFG_SEC_MODE, CFG_SEC_TLS, CFG_SEC_REQUIRE, CFG_SEC_SECRET, CFG_SEC_PAYLOAD_MAC };

/* cfg_security_post: 'tls' belongs to mode tls and is required there.  An
 * absent 'tls' section was loaded with defaults (all NULL) without its
 * post check, so mode tls finds its keys missing here. */
static int cfg_security_post(cfg_ctx *x, void *base, yaml_node_t *n, const yaml_mark_t *marks) {
  ps_security_conf *s = base;
  int given = cfg_value_node(x, n, "tls") != NULL;
  if (s->mode == PS_SEC_NONE && given)
    return cfg_err(x, marks[CFG_SEC_TLS], "'tls' is set but 'mode' is none (plaintext)");
  if (s->mode == PS_SEC_TLS && !given && n && n->type == YAML_SCALAR_NODE)
    return cfg_err(x, marks[CFG_SEC_MODE], "'security: tls' needs the mapping form: 'mode: tls' "
                   "and a 'tls' section (ca, cert, key) below it");
  if (s->mode == PS_SEC_TLS && !given)
    return cfg_err(x, marks[CFG_SEC_MODE],
                   "'mode' is tls but 'security.tls' (ca, cert, key) is missing");
  if (s->payload_mac && !s->secret_file)
    return cfg_err(x, marks[CFG_SEC_PAYLOAD_MAC],
                   "'payload_mac' needs 'secret_file' (the MAC key comes from the hello)");
  if (s->mode == PS_SEC_NONE && n && marks[CFG_SEC_REQUIRE].index != n->start_mark.index)
    cfg_warn(x, (ps_config *)((char *)base - offsetof(ps_config, security)),
             marks[CFG_SEC_REQUIRE], "'require_client_cert' applies under mode tls only; "
             "mode none ignores it");
  return 0;
}
static const cfg_table cfg_security_table =
    CFG_TABLE("in 'security'", cfg_security_slots, cfg_security_post);
static const cfg_slot cfg_sparse_slots[] = {
    {.name = "memory_rows", .type = &cfg_t_u64, .offset = offsetof(ps_sparse_conf, memory_rows),
     .def = "0", .min = 0, .max = UINT64_C(1) << 40},
    {.name = "admit_after", .type = &cfg_t_u32, .offset = offsetof(ps_sparse_conf, admit_after),
     .def = "0", .min = 0, .max = 1000000},
    {.name = "max_new_rows", .type = &cfg_t_u64, .offset = offsetof(ps_sparse_conf, max_new_rows),
     .def = "1048576", .min = 0, .max = UINT64_C(1) << 40},
    {.name = "plane", .type = &cfg_t_enum, .offset = offsetof(ps_sparse_conf, plane),
     .def = "channel", .arg = cfg_sparse_planes},
};

/* cfg_durability_post: group_commit_* set under mode periodic is kept
 * (it applies once the mode is sync) with a warning line per such key. */
static int cfg_durability_post(cfg_ctx *x, void *base, yaml_node_t *n, const yaml_mark_t *marks) {
  ps_config *c = base;
  if (!n || c->durability == PS_DUR_SYNC) return 0;
  for (size_t i = 0; i < sizeof cfg_durability_slots / sizeof cfg_durability_slots[0]; i++) {
    if (strncmp(cfg_durability_slots[i].name, "group_commit_", 13) ||
        marks[i].index == n->start_mark.index) /* (absent) */
      continue;
    cfg_warn(x, c, marks[i], "'%s' applies under durability mode sync only; mode periodic "
             "ignores it", cfg_durability_slots[i].name);
  }
  return 0;
}

static const cfg_table cfg_durability_table =
    CFG_TABLE("in 'durability'", cfg_durability_slots, cfg_durability_post);
static const cfg_table cfg_limits_table = CFG_TABLE("in 'limits'", cfg_limits_slots, NULL);
static yaml_node_t *cfg_value_node(cfg_ctx *x, yaml_node_t *n, const char *key);

/* cfg_workers_post: workers.min (0: workers.count) is at most the count
 * expected, and a lease outlasts the heartbeat interval (else an idle
 * worker would be declared dead between two of its beats). */
static int cfg_workers_post(cfg_ctx *x, void *base, yaml_node_t *n, const yaml_mark_t *marks) {
  ps_worker_conf *w = base;
  (void)marks;
  if (!w->min) w->min = w->count;
  if (w->min > w->count) {
    yaml_node_t *v = cfg_value_node(x, n, "min");
    return cfg_err(x, (v ? v : n)->start_mark,
                   "'min' (%" PRIu32 ") must not exceed 'count' (%" PRIu32 ")", w->min, w->count);
  }
  if (w->lease_ms > w->heartbeat_ms) return 0;
  yaml_node_t *v = cfg_value_node(x, n, "lease_ms");
  return cfg_err(x, (v ? v : n)->start_mark,
                 "'lease_ms' (%" PRIu32 ") must exceed 'heartbeat_ms' (%" PRIu32
                 "): a worker would be declared dead between two heartbeats",
                 w->lease_ms, w->heartbeat_ms);
}

static const cfg_table cfg_workers_table =
    CFG_TABLE("in 'workers'", cfg_workers_slots, cfg_workers_post);
/* cfg_training_post: topk set under another push codec, and staleness
 * under another consistency than ssp, are kept (they apply once the codec
 * is topk, the consistency ssp) with a warning. */
static int cfg_training_post(cfg_ctx *x, void *base, yaml_node_t *n, const yaml_mark_t *marks) {
  const ps_train_conf *t = base;
  ps_config *c = (ps_config *)((char *)base - offsetof(ps_config, training));
  size_t k = 0, st = 0; /* topk's slot, staleness's */
  while (strcmp(cfg_training_slots[k].name, "topk")) k++;
  while (strcmp(cfg_training_slots[st].name, "staleness")) st++;
  if (n && marks[k].index != n->start_mark.index && strcmp(t->codec, "topk"))
    cfg_warn(x, c, marks[k],
             "'topk' applies to topk pushes only: codec %s sends none (psctl submit "
             "--codec topk or --tensor-codec NAME=topk would use it)", t->codec);
  /* likewise a staleness bound under bsp (0) or asp (none) */
  if (n && marks[st].index != n->start_mark.index && strcmp(t->consistency, "ssp"))
    cfg_warn(x, c, marks[st], "'staleness' applies under consistency ssp only: %s ignores it",
             t->consistency);
  return 0;
}
static const cfg_table cfg_training_table =
    CFG_TABLE("in 'training'", cfg_training_slots, cfg_training_post);
static const cfg_table cfg_data_table = CFG_TABLE("in 'data'", cfg_data_slots, cfg_data_post);
static const cfg_table cfg_sparse_table = CFG_TABLE("in 'sparse'", cfg_sparse_slots, NULL);

/* ---- the shard list ---------------------------------------------------- */

/* cfg_dir_norm writes path P to OUT (CAP bytes) as text to compare:
 * repeated slashes, "." components and trailing slashes dropped ("/d//./e/"
 * is "/d/e"; ".." is left alone: resolving it needs the host's
 * filesystem).  Returns OUT's length, or 0 when P does not fit. */
static size_t cfg_dir_norm(const char *p, char *out, size_t cap) {
  size_t n = 0;
  if (*p == '/') out[n++] = '/';
  while (*p) {
    while (*p == '/') p++;
    size_t len = strcspn(p, "/");
    if (len && !(len == 1 && *p == '.')) {
      if (n && out[n - 1] != '/') out[n++] = '/';
      if (n + len + 1 > cap) return 0;
      memcpy(out + n, p, len);
      n += len;
    }
    p += len;
  }
  if (!n) out[n++] = '.';
  out[n] = '\0';
  return n;
}

/* cfg_dir_rel relates directories A and B as text (cfg_dir_norm): 0
 * apart (or too long to tell), CFG_DIR_SAME, CFG_DIR_IN (A is inside B)
 * or CFG_DIR_HOLDS (B is inside A).  "." holds every relative path that
 * does not start with "..". */
enum { CFG_DIR_SAME = 1, CFG_DIR_IN, CFG_DIR_HOLDS };
static int cfg_dir_rel(const char *a, const char *b) {
  char na[4096], nb[4096];
  size_t la = cfg_dir_norm(a, na, sizeof na), lb = cfg_dir_norm(b, nb, sizeof nb);
  if (!la || !lb) return 0;
  if (la == lb && !memcmp(na, nb, la)) return CFG_DIR_SAME;
  int adot = !strcmp(na, "."), bdot = !strcmp(nb, ".");
  if (adot != bdot) {
    const char *r = adot ? nb : na; /* the other one */
    if (*r == '/' || !strcmp(r, "..") || !strncmp(r, "../", 3)) return 0;
    return adot ? CFG_DIR_HOLDS : CFG_DIR_IN;
  }
  if (la == lb) return 0;
  const char *lo = la < lb ? na : nb, *hi = la < lb ? nb : na;
  size_t l = la < lb ? la : lb;
  if (memcmp(lo, hi, l) || (hi[l] != '/' && strcmp(lo, "/"))) return 0;
  return la > lb ? CFG_DIR_IN : CFG_DIR_HOLDS;
}

/* The two address keys of a shard or aggregator, in their slots' order. */
static const char *const cfg_addr_keys[2] = {"grpc", "channel"};

/* One address of a shard or aggregator, for cfg_addr_pair: its value,
 * where it is, and whose it is ("shard 1", "aggregator 'h0'") under which
 * key, for the error. */
typedef struct cfg_addr_at {
  const char *addr, *key;
  yaml_mark_t at;
  char who[96];
} cfg_addr_at;

static cfg_addr_at cfg_addr_shard(const ps_shard_conf *s, int k, yaml_mark_t at) {
  cfg_addr_at r = {k ? s->channel_addr : s->grpc_addr, cfg_addr_keys[k], at, ""};
  snprintf(r.who, sizeof r.who, "shard %" PRIu32, s->id);
  return r;
}

static cfg_addr_at cfg_addr_agg(const ps_agg_conf *g, int k, yaml_mark_t at) {
  cfg_addr_at r = {k ? g->channel_addr : g->grpc_addr, cfg_addr_keys[k], at, ""};
  snprintf(r.who, sizeof r.who, "aggregator '%s'", g->name);
  return r;
}

/* cfg_addr_pair checks address A against B, given earlier in the file,
 * as ps_addr_same compares them: one address twice is an error (at A,
 * naming both, whose and under which key); a wildcard host and another
 * address on its port are an error too when ONE_HOST (one psd's two
 * addresses), else a warning (the two may run on different hosts).  0 or
 * PS_ECONFIG. */
static int cfg_addr_pair(cfg_ctx *x, ps_config *c, const cfg_addr_at *a, const cfg_addr_at *b,
                         int one_host) {
  int rel = ps_addr_same(a->addr, b->addr);
  if (rel == PS_ADDR_OTHER) return 0;
  if (!strcmp(a->addr, b->addr))
    return cfg_err(x, a->at, "duplicate address '%s' for '%s' of %s (first at line %zu, '%s' of "
                   "%s)", a->addr, a->key, a->who, b->at.line + 1, b->key, b->who);
  if (rel == PS_ADDR_SAME || one_host)
    return cfg_err(x, a->at, "duplicate address '%s' for '%s' of %s, the same as '%s' (line %zu, "
                   "'%s' of %s)%s", a->addr, a->key, a->who, b->addr, b->at.line + 1, b->key,
                   b->who, rel == PS_ADDR_SAME ? "" : ": one psd's two addresses share its host");
  char host[256];
  int port;
  ps_errbuf eb;
  ps_addr_split(ps_addr_wildcard(a->addr) ? a->addr : b->addr, host, sizeof host, &port, &eb);
  cfg_warn(x, c, a->at, "'%s' and '%s' (line %zu) share port %d and '%s' is every address of "
           "its host: on one host the second to start cannot bind (fine on different hosts)",
           a->addr, b->addr, b->at.line + 1, port, host);
  return 0;
}

/* cfg_shard_dups checks shard I against shards 0..I (ids and addresses are
 * unique across the cluster; a data_dir named twice on one host is
 * warned about, one inside another's there is an error); MARKS holds
 * each shard's value marks. */
static int cfg_shard_dups(cfg_ctx *x, ps_config *c, size_t i,
                          yaml_mark_t (*marks)[CFG_MAX_SLOTS]) {
  const ps_shard_conf *s = &c->shards[i];
  for (size_t j = 0; j < i; j++)
    if (c->shards[j].id == s->id)
      return cfg_err(x, marks[i][CFG_SHARD_ID], "duplicate shard id %" PRIu32
                     " (first at line %zu)", s->id, marks[j][CFG_SHARD_ID].line + 1);
  for (size_t j = 0; j <= i; j++)
    for (int a = 0; a < 2; a++)
      for (int b = 0; b < 2; b++) {
        if (j == i && b >= a) continue;
        cfg_addr_at me = cfg_addr_shard(s, a, marks[i][CFG_SHARD_GRPC + a]),
                    other = cfg_addr_shard(&c->shards[j], b, marks[j][CFG_SHARD_GRPC + b]);
        if (cfg_addr_pair(x, c, &me, &other, j == i) < 0) return PS_ECONFIG;
      }
  /* one psd per directory (psd_store_lock_dir refuses a second): the same
   * data_dir on one host name is most likely a mistake, but shards in
   * containers of one machine may each have their own /data: a warning.
   * One host as an address, not as text (localhost is 127.0.0.1). */
  char host[256], other_host[256];
  int port;
  ps_errbuf eb;
  if (ps_addr_split(s->grpc_addr, host, sizeof host, &port, &eb) < 0) return 0; /* (checked) */
  for (size_t j = 0; j < i; j++) {
    int rel = cfg_dir_rel(s->data_dir, c->shards[j].data_dir);
    if (!rel || !ps_addr_same_host(s->grpc_addr, c->shards[j].grpc_addr) ||
        ps_addr_split(c->shards[j].grpc_addr, other_host, sizeof other_host, &port, &eb) < 0)
      continue;
    char there[300] = ""; /* the other's host, when written otherwise */
    if (strcmp(host, other_host)) snprintf(there, sizeof there, " ('%s' there)", other_host);
    /* One store inside another: both lock and start, and each would read,
     * count and clean the other's files (nothing at start refuses it). */
    if (rel != CFG_DIR_SAME)
      return cfg_err(x, marks[i][CFG_SHARD_DATA_DIR],
                     "'data_dir' '%s' of shard %" PRIu32 " is %s shard %" PRIu32 "'s '%s' "
                     "(line %zu), on the same host '%s'%s: the two stores would share files; "
                     "give each shard a directory of its own",
                     s->data_dir, s->id, rel == CFG_DIR_IN ? "inside" : "the parent of",
                     c->shards[j].id, c->shards[j].data_dir, marks[j][CFG_SHARD_DATA_DIR].line + 1,
                     host, there);
    cfg_warn(x, c, marks[i][CFG_SHARD_DATA_DIR],
             "'data_dir' '%s' is shard %" PRIu32 "'s too (line %zu), on the same host '%s'%s: "
             "unless they run apart (containers), the second one to start is refused",
             s->data_dir, c->shards[j].id, marks[j][CFG_SHARD_DATA_DIR].line + 1, host, there);
    break;
  }
  return 0;
}

/* cfg_agg_dups checks aggregator I against aggregators 0..I: names and
 * addresses are unique (against the shards: cfg_top_post). */
static int cfg_agg_dups(cfg_ctx *x, ps_config *c, size_t i,
                        yaml_mark_t (*marks)[CFG_MAX_SLOTS]) {
  const ps_agg_conf *g = &c->aggs[i];
  for (size_t j = 0; j <= i; j++) {
    if (j < i && !strcmp(c->aggs[j].name, g->name))
      return cfg_err(x, marks[i][CFG_AGG_NAME], "duplicate aggregator name '%s' (first at line %zu)",
                     g->name, marks[j][CFG_AGG_NAME].line + 1);
    for (int a = 0; a < 2; a++)
      for (int b = 0; b < 2; b++) {
        if (j == i && b >= a) continue;
        cfg_addr_at me = cfg_addr_agg(g, a, marks[i][CFG_AGG_GRPC + a]),
                    other = cfg_addr_agg(&c->aggs[j], b, marks[j][CFG_AGG_GRPC + b]);
        if (cfg_addr_pair(x, c, &me, &other, j == i) < 0) return PS_ECONFIG;
      }
  }
  return 0;
}

/* A list of mappings loaded by one table into an array of ps_config
 * (the 'shards' and 'aggregators' lists): the slot's arg. */
typedef struct cfg_list {
  const cfg_table *table;
  size_t elem;            /* bytes per entry */
  size_t arr_off, n_off;  /* offsets of the array pointer and its count in ps_config */
  int (*dups)(cfg_ctx *x, ps_config *c, size_t i, yaml_mark_t (*marks)[CFG_MAX_SLOTS]);
} cfg_list;

/* cfg_load_list loads a list S->arg describes; FIELD is the whole ps_config. */
static int cfg_load_list(cfg_ctx *x, const cfg_slot *s, yaml_node_t *n, void *field) {
  const cfg_list *l = s->arg;
  void **arr = (void **)((char *)field + l->arr_off);
  size_t *np = (size_t *)((char *)field + l->n_off);
  if (!n) return 0; /* absent: an empty list (a required one never gets here) */
  if (cfg_is_null(n)) return cfg_empty(x, s, n);
  if (n->type != YAML_SEQUENCE_NODE)
    return cfg_err(x, n->start_mark, "expected a list for '%s'", s->name);
  size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
  if (count < s->min || count > s->max)
    return cfg_err(x, n->start_mark, "'%s' has %zu entries, expected %" PRIu64 "..%" PRIu64,
                   s->name, count, s->min, s->max);
  *arr = calloc(count ? count : 1, l->elem);
  yaml_mark_t (*marks)[CFG_MAX_SLOTS] = calloc(count ? count : 1, sizeof *marks);
  if (!*arr || !marks) {
    free(marks);
    return ps_errf(x->eb, PS_ENOMEM, "%s: out of memory", x->path);
  }
  *np = count;
  int r = 0;
  for (size_t i = 0; i < count && r == 0; i++) {
    yaml_node_t *e = cfg_node(x, n->data.sequence.items.start[i]);
    if (e->type != YAML_MAPPING_NODE)
      r = cfg_err(x, e->start_mark, "expected a mapping for a '%s' entry", s->name);
    else if ((r = cfg_load_table(x, l->table, e, (char *)*arr + i * l->elem, marks[i])) == 0)
      r = l->dups(x, field, i, marks);
  }
  free(marks);
  return r;
}

static void cfg_release_list(const cfg_slot *s, void *field) {
  const cfg_list *l = s->arg;
  void **arr = (void **)((char *)field + l->arr_off);
  size_t *np = (size_t *)((char *)field + l->n_off);
  for (size_t i = 0; i < *np; i++) cfg_release_table(l->table, (char *)*arr + i * l->elem);
  free(*arr);
  *arr = NULL;
  *np = 0;
}

static const cfg_type cfg_t_list = {.what = "a list", .load = cfg_load_list,
                                    .release = cfg_release_list};
static const cfg_list cfg_shard_list = {&cfg_shard_table, sizeof(ps_shard_conf),
                                        offsetof(ps_config, shards), offsetof(ps_config, nshards),
                                        cfg_shard_dups};
static const cfg_list cfg_agg_list = {&cfg_agg_table, sizeof(ps_agg_conf),
                                      offsetof(ps_config, aggs), offsetof(ps_config, naggs),
                                      cfg_agg_dups};

/* ---- the top level ----------------------------------------------------- */

static const cfg_slot cfg_top_slots[] = {
    {.name = "cluster", .type = &cfg_t_str, .offset = offsetof(ps_config, cluster),
     .required = 1, .check = cfg_check_name},
    {.name = "chunk_elems", .type = &cfg_t_u32, .offset = offsetof(ps_config, chunk_elems),
     .def = "65536", .min = 1, .max = PS_CHUNK_ELEMS_MAX},
    {.name = "durability", .type = &cfg_t_section, .offset = 0, .arg = &cfg_durability_table},
    {.name = "limits", .type = &cfg_t_section, .offset = 0, .arg = &cfg_limits_table},
    {.name = "shards", .type = &cfg_t_list, .offset = 0, .required = 1, .min = 1,
     .max = 1024, .arg = &cfg_shard_list},
    {.name = "aggregators", .type = &cfg_t_list, .offset = 0, .min = 0, .max = 1024,
     .arg = &cfg_agg_list},
    {.name = "workers", .type = &cfg_t_section, .offset = offsetof(ps_config, workers),
     .arg = &cfg_workers_table},
    {.name = "training", .type = &cfg_t_section, .offset = offsetof(ps_config, training),
     .arg = &cfg_training_table},
    {.name = "data", .type = &cfg_t_section, .offset = offsetof(ps_config, data),
     .arg = &cfg_data_table},
    {.name = "security", .type = &cfg_t_section, .offset = offsetof(ps_config, security),
     .required = 1, .arg = &cfg_security_table},
    {.name = "sparse", .type = &cfg_t_section, .offset = offsetof(ps_config, sparse),
     .arg = &cfg_sparse_table},
};
/* cfg_value_node returns the value node of KEY in mapping N, or NULL
 * (also when N is NULL or not a mapping). */
static yaml_node_t *cfg_value_node(cfg_ctx *x, yaml_node_t *n, const char *key) {
  if (!n || n->type != YAML_MAPPING_NODE) return NULL;
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *k = cfg_node(x, p->key);
    if (k->type == YAML_SCALAR_NODE && !strcmp((const char *)k->data.scalar.value, key))
      return cfg_node(x, p->value);
  }
  return NULL;
}

/* cfg_item returns item I of sequence LIST, or FALLBACK when LIST is
 * none (a list loaded from it has its items). */
static yaml_node_t *cfg_item(cfg_ctx *x, yaml_node_t *list, size_t i, yaml_node_t *fallback) {
  if (!list || list->type != YAML_SEQUENCE_NODE ||
      i >= (size_t)(list->data.sequence.items.top - list->data.sequence.items.start))
    return fallback;
  return cfg_node(x, list->data.sequence.items.start[i]);
}

/* cfg_aggs_sum_warn warns when the aggregators together expect more
 * local workers per clock than workers.count, none of them alone (that
 * one is warned about on its own): the job's workers cannot fill them
 * all, so one at least waits its max_delay_ms on each sum for pushes that
 * never come (unless workers beyond the count join).  At workers'
 * 'count', or the 'aggregators' list when the file leaves it unset. */
static void cfg_aggs_sum_warn(cfg_ctx *x, ps_config *c, yaml_node_t *n) {
  uint64_t sum = 0;
  char names[400] = "", parts[200] = "";
  size_t nl = 0, pl = 0;
  for (size_t i = 0; i < c->naggs; i++) {
    if (c->aggs[i].workers > c->workers.count) return; /* warned about alone */
    sum += c->aggs[i].workers;
    /* the list cut with "..." when long: the sum says the rest */
    if (nl < sizeof names)
      nl += (size_t)snprintf(names + nl, sizeof names - nl, "%s'%s'", i ? ", " : "",
                             c->aggs[i].name);
    if (pl < sizeof parts)
      pl += (size_t)snprintf(parts + pl, sizeof parts - pl, "%s%" PRIu32, i ? " + " : "",
                             c->aggs[i].workers);
  }
  if (c->naggs < 2 || sum <= c->workers.count) return;
  if (nl >= sizeof names) memcpy(names + sizeof names - 4, "...", 4);
  if (pl >= sizeof parts) memcpy(parts + sizeof parts - 4, "...", 4);
  yaml_node_t *v = cfg_value_node(x, cfg_value_node(x, n, "workers"), "count");
  if (!v) v = cfg_value_node(x, n, "aggregators");
  cfg_warn(x, c, (v ? v : n)->start_mark,
           "aggregators %s expect %" PRIu64 " local workers per clock together ('workers': %s), "
           "more than workers' 'count' (%" PRIu32 "): unless more workers than that join, one "
           "of them at least waits its 'max_delay_ms' on each sum for pushes that never come",
           names, sum, parts, c->workers.count);
}

/* cfg_aggs_post checks the aggregators against the shards (no address
 * twice as ps_addr_same compares them; a wildcard's port is warned
 * about), each one's max_delay_ms against the workers' wait for a reply
 * (training.pull_timeout_ms + 5 s: a push held for the whole delay still
 * leaves the root 5 s), and workers.aggregator against the aggregators
 * (a known name). */
static int cfg_aggs_post(cfg_ctx *x, ps_config *c, yaml_node_t *n) {
  yaml_node_t *list = cfg_value_node(x, n, "aggregators");
  yaml_node_t *shards = cfg_value_node(x, n, "shards");
  const char *const *keys = cfg_addr_keys;
  for (size_t i = 0; i < c->naggs; i++) {
    const ps_agg_conf *g = &c->aggs[i];
    const char *mine[2] = {g->grpc_addr, g->channel_addr};
    yaml_node_t *e = cfg_item(x, list, i, n);
    /* more than the job's workers: every sum waits max_delay_ms for
     * pushes that never come (unless workers beyond the count join) */
    if (g->workers > c->workers.count) {
      yaml_node_t *v = cfg_value_node(x, e, "workers");
      cfg_warn(x, c, (v ? v : e)->start_mark,
               "aggregator '%s' expects %" PRIu32 " local workers per clock ('workers'), more "
               "than workers' 'count' (%" PRIu32 "): unless more workers than that join, each "
               "of its sums waits 'max_delay_ms' (%" PRIu32 " ms) for pushes that never come",
               g->name, g->workers, c->workers.count, g->max_delay_ms);
    }
    if (g->max_delay_ms >= c->training.pull_timeout_ms) {
      yaml_node_t *v = cfg_value_node(x, e, "max_delay_ms");
      return cfg_err(x, (v ? v : e)->start_mark,
                     "aggregator '%s': 'max_delay_ms' (%" PRIu32 ") must be below training's "
                     "'pull_timeout_ms' (%" PRIu32 "): a push held that long would outlast "
                     "its worker's wait for the reply", g->name, g->max_delay_ms,
                     c->training.pull_timeout_ms);
    }
    for (size_t j = 0; j < c->nshards; j++) {
      const char *theirs[2] = {c->shards[j].grpc_addr, c->shards[j].channel_addr};
      yaml_node_t *se = cfg_item(x, shards, j, n);
      for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
          int rel = ps_addr_same(mine[a], theirs[b]);
          char as[300] = ""; /* the shard's text where it differs */
          if (strcmp(mine[a], theirs[b])) snprintf(as, sizeof as, " ('%s')", theirs[b]);
          yaml_node_t *am = cfg_value_node(x, e, keys[a]), *bm = cfg_value_node(x, se, keys[b]);
          /* at the aggregator's key, naming both keys (which of its two
           * addresses, and which of the shard's, clash) */
          if (rel == PS_ADDR_SAME)
            return cfg_err(x, (am ? am : e)->start_mark,
                           "aggregator '%s': '%s' address '%s' is shard %" PRIu32 "'s%s "
                           "(its '%s', line %zu)", g->name, keys[a], mine[a], c->shards[j].id, as,
                           keys[b], (size_t)(bm ? bm : se)->start_mark.line + 1);
          if (rel == PS_ADDR_MAYBE) {
            cfg_addr_at me = cfg_addr_agg(g, a, (am ? am : e)->start_mark),
                        other = cfg_addr_shard(&c->shards[j], b, (bm ? bm : se)->start_mark);
            cfg_addr_pair(x, c, &me, &other, 0);
          }
        }
    }
  }
  cfg_aggs_sum_warn(x, c, n);
  const char *want = c->workers.aggregator;
  if (!want || ps_config_agg(c, want)) return 0;
  yaml_node_t *v = cfg_value_node(x, cfg_value_node(x, n, "workers"), "aggregator");
  return cfg_err(x, v ? v->start_mark : n->start_mark,
                 "workers' 'aggregator' '%s' is not in the 'aggregators' list", want);
}

/* cfg_top_post: a connection with a parked pull is busy, so an idle
 * connection must be allowed to outwait the longest pull. */
static int cfg_top_post(cfg_ctx *x, void *base, yaml_node_t *n, const yaml_mark_t *marks) {
  ps_config *c = base;
  int r = cfg_aggs_post(x, c, n);
  if (r < 0) return r;
  (void)marks;
  if (c->idle_timeout_ms > c->training.pull_timeout_ms) return 0;
  yaml_node_t *lim = cfg_value_node(x, n, "limits");
  yaml_node_t *v = cfg_value_node(x, lim, "idle_timeout_ms");
  /* at the key the file sets: idle_timeout_ms, else pull_timeout_ms */
  yaml_node_t *pt = cfg_value_node(x, cfg_value_node(x, n, "training"), "pull_timeout_ms");
  yaml_node_t *at = v ? v : pt ? pt : lim ? lim : n;
  return cfg_err(x, at->start_mark,
                 "'idle_timeout_ms' (%" PRIu32 ") must exceed training's 'pull_timeout_ms' (%" PRIu32
                 ")", c->idle_timeout_ms, c->training.pull_timeout_ms);
}

static const cfg_table cfg_top_table = CFG_TABLE("at the top level", cfg_top_slots, cfg_top_post);

/* ---- loading ----------------------------------------------------------- */

/* cfg_yaml_error reports the parser's error with its position. */
/* cfg_v6_hint returns a hint when the line holding byte AT looks like an
 * unquoted IPv6 address ("key: [::1]:7000", which YAML reads as a list
 * followed by text), else "". */
static const char *cfg_v6_hint(const cfg_ctx *x, size_t at) {
  if (!x->buf || at > x->len) return "";
  size_t b = at, e = at;
  while (b > 0 && x->buf[b - 1] != '\n') b--;
  while (e < x->len && x->buf[e] != '\n') e++;
  for (size_t i = b; i + 2 < e; i++)
    if (x->buf[i] == ':' && x->buf[i + 1] == ' ' && x->buf[i + 2] == '[')
      for (size_t j = i + 3; j + 1 < e; j++)
        if (x->buf[j] == ']' && x->buf[j + 1] == ':')
          return " (an IPv6 address must be quoted: \"[::1]:7000\")";
  return "";
}

static int cfg_yaml_error(cfg_ctx *x, const yaml_parser_t *p) {
  if (p->error == YAML_MEMORY_ERROR) return ps_errf(x->eb, PS_ENOMEM, "%s: out of memory", x->path);
  if (p->error == YAML_READER_ERROR)
    return ps_errf(x->eb, PS_ECONFIG, "%s: byte %zu: %s", x->path, p->problem_offset,
                   p->problem ? p->problem : "cannot read");
  const char *hint = cfg_v6_hint(x, p->problem_mark.index);
  if (!*hint && p->context) hint = cfg_v6_hint(x, p->context_mark.index);
  if (p->context)
    return cfg_err(x, p->problem_mark, "%s (%s from line %zu)%s",
                   p->problem ? p->problem : "yaml syntax error", p->context,
                   p->context_mark.line + 1, hint);
  return cfg_err(x, p->problem_mark, "%s%s", p->problem ? p->problem : "yaml syntax error", hint);
}

/* cfg_load_doc loads the parsed document's root into C. */
static int cfg_load_doc(cfg_ctx *x, ps_config *c) {
  yaml_node_t *root = yaml_document_get_root_node(x->doc);
  yaml_mark_t top = {0, 0, 0};
  if (!root || cfg_is_null(root))
    return cfg_err(x, root ? root->start_mark : top,
                   "empty configuration (expected a mapping with 'cluster' and 'shards')");
  if (root->type != YAML_MAPPING_NODE)
    return cfg_err(x, root->start_mark, "expected a mapping at the top level");
  return cfg_load_table(x, &cfg_top_table, root, c, NULL);
}

/* cfg_check_depth scans BUF's tokens and refuses a nesting deeper than
 * PS_CONFIG_MAX_DEPTH (block and flow collections together) at the token
 * that passes it, any YAML tag and any string holding a NUL byte.
 * libyaml's scanner keeps one simple-key slot per flow level and walks
 * them all for every token, so stopping at the bound
 * keeps this pass linear; the loader then never sees a deep file.
 * Syntax errors are left for the loader to report. */
static int cfg_check_depth(cfg_ctx *x, const unsigned char *buf, size_t len) {
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) return ps_errf(x->eb, PS_ENOMEM, "%s: out of memory", x->path);
  yaml_parser_set_input_string(&p, buf, len);
  int depth = 0, r = 0;
  for (;;) {
    yaml_token_t t;
    if (!yaml_parser_scan(&p, &t)) break;
    yaml_token_type_t type = t.type;
    yaml_mark_t m = t.start_mark;
    if (type == YAML_TAG_TOKEN) {
      /* A tag changes how YAML would read the value (!!str false is a
       * string) while the loader hands psd the same plain text either
       * way: refused rather than silently read by psd's own rules. */
      r = cfg_err(x, m, "YAML tag '%s%s' (psd reads values by its own rules; remove the tag)",
                  (const char *)t.data.tag.handle, (const char *)t.data.tag.suffix);
      yaml_token_delete(&t);
      break;
    }
    if (type == YAML_SCALAR_TOKEN && memchr(t.data.scalar.value, 0, t.data.scalar.length)) {
      /* "a\0b" (YAML's \0, \x00 or \u0000 escape): every value is read as a C string,
       * which would end at the NUL, and a name or path cut short there
       * would pass every later check. */
      r = cfg_err(x, m, "a string holds a NUL byte (YAML's \\0, \\x00 or \\u0000 escape); psd "
                        "would read it cut short there");
      yaml_token_delete(&t);
      break;
    }
    yaml_token_delete(&t);
    if (type == YAML_STREAM_END_TOKEN) break;
    if (type == YAML_BLOCK_SEQUENCE_START_TOKEN || type == YAML_BLOCK_MAPPING_START_TOKEN ||
        type == YAML_FLOW_SEQUENCE_START_TOKEN || type == YAML_FLOW_MAPPING_START_TOKEN) {
      if (++depth > PS_CONFIG_MAX_DEPTH) {
        r = cfg_err(x, m, "nested deeper than %d levels", PS_CONFIG_MAX_DEPTH);
        break;
      }
    } else if (type == YAML_BLOCK_END_TOKEN || type == YAML_FLOW_SEQUENCE_END_TOKEN ||
               type == YAML_FLOW_MAPPING_END_TOKEN) {
      if (depth > 0) depth--;
    }
  }
  yaml_parser_delete(&p);
  return r;
}

/* cfg_parse parses BUF (LEN bytes) and loads it into C. */
static int cfg_parse(cfg_ctx *x, const unsigned char *buf, size_t len, ps_config *c) {
  yaml_parser_t parser;
  yaml_document_t doc, extra;
  int r = cfg_check_depth(x, buf, len);
  if (r < 0) return r;
  if (!yaml_parser_initialize(&parser)) return ps_errf(x->eb, PS_ENOMEM, "%s: out of memory", x->path);
  yaml_parser_set_input_string(&parser, buf, len);
  if (!yaml_parser_load(&parser, &doc)) {
    r = cfg_yaml_error(x, &parser);
    goto out_parser;
  }
  x->doc = &doc;
  r = cfg_load_doc(x, c);
  /* A second document would be silently ignored: refuse it.  An empty
   * one (a "---" after the file's, as some tools write) holds nothing to
   * ignore; libyaml ends the stream with a document without a root. */
  for (int more = r == 0; more;) {
    if (!yaml_parser_load(&parser, &extra)) {
      r = cfg_yaml_error(x, &parser);
      break;
    }
    yaml_node_t *n = yaml_document_get_root_node(&extra);
    more = n != NULL;
    if (n && !cfg_is_null(n)) {
      r = cfg_err(x, n->start_mark, "more than one yaml document");
      more = 0;
    }
    yaml_document_delete(&extra);
  }
  yaml_document_delete(&doc);
out_parser:
  yaml_parser_delete(&parser);
  return r;
}

int ps_config_load_buf(ps_config *c, const char *name, const void *buf, size_t len,
                       ps_errbuf *eb) {
  memset(c, 0, sizeof *c);
  cfg_ctx x = {.path = name, .doc = NULL, .eb = eb, .buf = buf, .len = len};
  int r;
  if (len > PS_CONFIG_MAX_BYTES)
    r = ps_errf(eb, PS_ECONFIG, "%s: %zu bytes, more than the %u a configuration may have", name,
                len, PS_CONFIG_MAX_BYTES);
  else if (!(c->path = strdup(name)))
    r = ps_errf(eb, PS_ENOMEM, "%s: out of memory", name);
  else
    r = cfg_parse(&x, buf, len, c);
  if (r < 0) ps_config_release(c);
  return r;
}

FILE *ps_config_fopen(const char *path) {
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return NULL;
  int fl = fcntl(fd, F_GETFL);
  FILE *f = fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0 ? fdopen(fd, "rb") : NULL;
  if (!f) {
    int e = errno;
    close(fd);
    errno = e;
  }
  return f;
}

int ps_config_load(ps_config *c, const char *path, ps_errbuf *eb) {
  memset(c, 0, sizeof *c);
  FILE *f = ps_config_fopen(path);
  if (!f) return ps_errf(eb, PS_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  int r = 0;
  unsigned char *buf = NULL;
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    r = ps_errf(eb, PS_EIO, "%s: cannot read: %s", path, strerror(EISDIR));
    goto out_file;
  }
  /* One byte more than the cap tells an over-long file (or pipe) apart. */
  if (!(buf = malloc(PS_CONFIG_MAX_BYTES + 1))) {
    r = ps_errf(eb, PS_ENOMEM, "%s: out of memory", path);
    goto out_file;
  }
  size_t len = fread(buf, 1, PS_CONFIG_MAX_BYTES + 1, f);
  if (ferror(f)) {
    r = ps_errf(eb, PS_EIO, "%s: cannot read: %s", path, strerror(errno));
    goto out_file;
  }
  if (len > PS_CONFIG_MAX_BYTES && S_ISREG(st.st_mode)) len = (size_t)st.st_size;
  r = ps_config_load_buf(c, path, buf, len, eb);
out_file:
  free(buf);
  fclose(f);
  return r;
}

void ps_config_print_warnings(const ps_config *c, FILE *f) {
  if (c->warning[0]) fprintf(f, "%s\n", c->warning);
}

void ps_config_release(ps_config *c) {
  if (!c) return;
  cfg_release_table(&cfg_top_table, c);
  free(c->path);
  memset(c, 0, sizeof *c);
}

const ps_shard_conf *ps_config_shard(const ps_config *c, uint32_t id) {
  for (size_t i = 0; i < c->nshards; i++)
    if (c->shards[i].id == id) return &c->shards[i];
  return NULL;
}

void ps_config_shard_ids(const ps_config *c, uint32_t *ids) {
  for (size_t i = 0; i < c->nshards; i++) ids[i] = c->shards[i].id;
}

uint64_t ps_config_place_id(const ps_config *c) {
  uint64_t sum = 0; /* a sum: rendezvous placement does not depend on the ids' order */
  for (size_t i = 0; i < c->nshards; i++) sum += ps_mix64((uint64_t)c->shards[i].id + 1);
  return ps_mix64(sum ^ ps_mix64(((uint64_t)c->chunk_elems << 32) | (uint32_t)c->nshards));
}

const ps_shard_conf *ps_config_coordinator(const ps_config *c) {
  const ps_shard_conf *s = ps_config_shard(c, c->workers.coordinator);
  return s ? s : (c->nshards ? &c->shards[0] : NULL);
}

/* cfg_cgroup_max returns the smallest memory limit on this process's
 * cgroup path (its own cgroup and every parent): memory.max under cgroup
 * v2, memory.limit_in_bytes under v1's memory controller; UINT64_MAX when
 * there is none ("max", or v1's huge "no limit" number, are above any). */
static uint64_t cfg_cgroup_max(void) {
  char line[4096], path[4300];
  const char *base = NULL, *file = NULL;
  char *rel = NULL;
  uint64_t best = UINT64_MAX;
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (!f) return best;
  while (!rel && fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    char *ctl = strchr(line, ':'), *p = ctl ? strchr(ctl + 1, ':') : NULL;
    if (!p) continue;
    *p = '\0';
    if (!strcmp(ctl + 1, "")) base = "/sys/fs/cgroup", file = "memory.max";
    else if (!strcmp(ctl + 1, "memory")) base = "/sys/fs/cgroup/memory", file = "memory.limit_in_bytes";
    else continue;
    rel = p + 1;
  }
  fclose(f);
  if (!rel) return best;
  for (;;) {
    snprintf(path, sizeof path, "%s%s/%s", base, strcmp(rel, "/") ? rel : "", file);
    FILE *m = fopen(path, "r");
    unsigned long long v;
    if (m) {
      if (fscanf(m, "%llu", &v) == 1 && v < best) best = v;
      fclose(m);
    }
    char *slash = strrchr(rel, '/');
    if (!slash) break;
    if (slash == rel) {
      if (!rel[1]) break;
      rel[1] = '\0';
    } else {
      *slash = '\0';
    }
  }
  return best;
}

uint64_t ps_config_shard_budget(const ps_config *c) {
  if (c->max_shard_bytes) return c->max_shard_bytes;
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  uint64_t mem = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : UINT64_MAX;
  uint64_t cg = cfg_cgroup_max();
  if (cg < mem) mem = cg;
  return mem / 3;
}

/* ps_config_reply_timeout_ms: see ps_config.h. */
int ps_config_reply_timeout_ms(const ps_config *c) {
  return (int)c->training.pull_timeout_ms + 5000; /* at most 86400000: fits */
}

/* ps_config_dead_ms: see ps_config.h. */
int ps_config_dead_ms(const ps_config *c) {
  uint32_t ms = c->workers.lease_ms / 2;
  return ms > 1000 ? (int)ms : 1000; /* lease_ms fits an int */
}

/* ps_config_agg: see ps_config.h. */
const ps_agg_conf *ps_config_agg(const ps_config *c, const char *name) {
  for (size_t i = 0; name && i < c->naggs; i++)
    if (!strcmp(c->aggs[i].name, name)) return &c->aggs[i];
  return NULL;
}
