/* ps_log: one line per message on stderr, syslog levels.
 *
 * With stderr connected to journald (JOURNAL_STREAM names stderr's
 * device and inode, checked at ps_log_init) lines carry a "<N>" priority
 * prefix and no timestamp; otherwise
 * "2026-11-24T10:00:00.123Z psd[pid] warning: message".  Thread-safe
 * (one write(2) per line, under a lock).  A line stderr cannot take at
 * once (a full pipe nobody reads) is dropped, not waited for (an error
 * line waits up to half a second): the next line written is preceded by a
 * warning with the count dropped. */
#ifndef PS_LOG_H
#define PS_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <syslog.h>

/* ps_log_init sets the program name shown in lines (borrowed: a string
 * literal or argv[0] that outlives the program) and the maximum level
 * printed (LOG_DEBUG .. LOG_EMERG; default LOG_INFO). */
void ps_log_init(const char *prog, int max_level);

void ps_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ps_log_raw writes TEXT (LEN bytes, at most PIPE_BUF are kept) to
 * stderr as it is, with no prefix, by the same rule as a log line: dropped
 * (and counted) when stderr cannot take it at once.  For progress lines. */
void ps_log_raw(const char *text, size_t len);

/* ps_log_plain writes the message FMT formats to stderr as it is, with no
 * timestamp or program name: what a user reads on a terminal, such as
 * "FILE:LINE:COL: message", a usage text or `psd -t`'s warnings.  With
 * stderr connected to journald, each of its lines gets LEVEL's "<N>"
 * prefix as ps_log's do, so that a start that a bad file or command line
 * ended is logged as an error (`journalctl -p err`), not at journald's
 * default priority, info.  FMT's text ends in a newline. */
void ps_log_plain(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ps_err(...) ps_log(LOG_ERR, __VA_ARGS__)
#define ps_warn(...) ps_log(LOG_WARNING, __VA_ARGS__)
#define ps_info(...) ps_log(LOG_INFO, __VA_ARGS__)
#define ps_debug(...) ps_log(LOG_DEBUG, __VA_ARGS__)

/* ps_log_u32s writes V[0..N) as "0,3,6" into BUF (CAP >= 20 bytes), ending
 * in ",..." where the rest does not fit; returns BUF.  For log lines and
 * table cells. */
const char *ps_log_u32s(char *buf, size_t cap, const uint32_t *v, size_t n);

/* ps_log_escape writes the first MAX bytes of S (NULL: "") into BUF (CAP
 * bytes) with every byte outside printable ASCII, and the quote ' and
 * backslash, as \xNN, ending in "..." when S is longer or BUF too small; returns BUF.
 * For strings a peer chose (key ids, cluster and model names) that reach
 * a log line or an error message: a newline in them must not start a
 * forged log line.  CAP >= 8. */
const char *ps_log_escape(char *buf, size_t cap, const char *s, size_t max);

/* A rate-limited count's last log line: the count then (0: none yet) and
 * its time in ms (any clock, the same for every call). */
typedef struct ps_said {
  uint64_t logged, ms;
} ps_said;

/* ps_said_due returns how many of CTR (a count just raised) no line has
 * said yet when one is due at NOW_MS (the first one, or EVERY_MS after
 * the last), and records it in S as said; 0 when none is due.  One piece
 * of logic for "refused N ... since the last report" lines. */
uint64_t ps_said_due(ps_said *s, uint64_t ctr, uint64_t now_ms, uint64_t every_ms);

#endif
