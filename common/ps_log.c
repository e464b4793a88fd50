/* ps_log: stderr logging with syslog levels, journald-aware. */
#include "ps_log.h"

#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *log_prog = "ps";
static int log_max = LOG_INFO;
static int log_journal = -1; /* -1: not yet checked */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
#define LOG_ERR_WAIT_MS 500 /* how long an error line waits for room (log_write) */
static unsigned long long log_dropped; /* lines stderr could not take (under log_mu) */

static const char *const log_names[] = {"emerg", "alert", "crit", "error",
                                        "warning", "notice", "info", "debug"};

/* log_to_journal says whether stderr is the stream JOURNAL_STREAM names
 * ("DEV:INODE", systemd's convention): the variable is inherited by
 * children whose stderr went elsewhere (psd ... 2>file under a unit), and
 * a file must get timestamps and the program's name, not "<N>" alone. */
static int log_to_journal(void) {
  const char *v = getenv("JOURNAL_STREAM");
  unsigned long long dev, ino;
  int end = 0;
  struct stat st;
  if (!v || sscanf(v, "%llu:%llu%n", &dev, &ino, &end) != 2 || v[end] != '\0') return 0;
  return fstat(STDERR_FILENO, &st) == 0 && (unsigned long long)st.st_dev == dev &&
         (unsigned long long)st.st_ino == ino;
}

void ps_log_init(const char *prog, int max_level) {
  if (prog) {
    const char *slash = strrchr(prog, '/');
    log_prog = slash ? slash + 1 : prog;
  }
  log_max = max_level;
  log_journal = log_to_journal();
}

/* log_prefix writes LEVEL's line prefix into LINE (CAP bytes); returns
 * its length. */
static int log_prefix(char *line, size_t cap, int level) {
  if (log_journal) return snprintf(line, cap, "<%d>", level);
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  return snprintf(line, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s[%d] %s: ",
                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                  tm.tm_sec, (int)(tv.tv_usec / 1000), log_prog, (int)getpid(),
                  log_names[level & 7]);
}

/* log_write writes LINE (LEN bytes, at most PIPE_BUF; of LEVEL) to stderr
 * only when stderr can take it now, else counts it dropped: a pipe nobody
 * reads (a stalled journald, a terminal's reader stopped) must not block
 * the thread that logs, an event loop among them, and SIGTERM with it.
 * An error line waits up to LOG_ERR_WAIT_MS first: a reader that is only
 * slow still gets a program's last words.  A pipe or socket that polls
 * writable takes a line this short whole.  The next line written is
 * preceded by the count dropped.  Under log_mu, so that no other thread
 * fills the room between the poll and the write. */
static void log_write(const char *line, size_t len, int level) {
  pthread_mutex_lock(&log_mu);
  struct pollfd p = {.fd = STDERR_FILENO, .events = POLLOUT};
  /* an error line (often a program's last words before it exits) waits a
   * little for a reader that is only slow */
  int wait_ms = level <= LOG_ERR ? LOG_ERR_WAIT_MS : 0;
  if (poll(&p, 1, wait_ms) != 1 || !(p.revents & POLLOUT) || (p.revents & (POLLERR | POLLNVAL))) {
    log_dropped++;
  } else {
    if (log_dropped) {
      char note[256];
      int n = log_prefix(note, sizeof note, LOG_WARNING);
      n += snprintf(note + n, sizeof note - (size_t)n,
                    "%llu log lines dropped: stderr took no more (nobody read it)\n",
                    log_dropped);
      ssize_t w = write(STDERR_FILENO, note, (size_t)n);
      (void)w;
      log_dropped = 0;
    }
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
  }
  pthread_mutex_unlock(&log_mu);
}

/* ps_log_raw: see ps_log.h. */
void ps_log_raw(const char *text, size_t len) {
  if (len > PIPE_BUF) len = PIPE_BUF;
  log_write(text, len, LOG_INFO);
}

void ps_log(int level, const char *fmt, ...) {
  if (level > log_max) return;
  if (log_journal < 0) log_journal = log_to_journal();
  char line[2048];
  int n = log_prefix(line, sizeof line, level);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2));
  line[len++] = '\n';
  log_write(line, len, level);
}

/* ps_log_plain: see ps_log.h. */
void ps_log_plain(int level, const char *fmt, ...) {
  if (level > log_max) return;
  if (log_journal < 0) log_journal = log_to_journal();
  va_list ap;
  va_start(ap, fmt);
  char *text = NULL;
  int n = vasprintf(&text, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  pthread_mutex_lock(&log_mu);
  if (!log_journal) {
    fputs(text, stderr);
  } else {
    for (const char *p = text; *p;) {
      const char *nl = strchr(p, '\n');
      size_t len = nl ? (size_t)(nl - p) : strlen(p);
      fprintf(stderr, "<%d>%.*s\n", level, (int)len, p);
      p += len + (nl != NULL);
    }
  }
  fflush(stderr);
  pthread_mutex_unlock(&log_mu);
  free(text);
}

/* ps_log_u32s: see ps_log.h. */
const char *ps_log_u32s(char *buf, size_t cap, const uint32_t *v, size_t n) {
  size_t len = 0, i = 0;
  buf[0] = 0;
  for (; i < n && len + 16 < cap; i++)
    len += (size_t)snprintf(buf + len, cap - len, "%s%u", i ? "," : "", v[i]);
  if (i < n) snprintf(buf + len, cap - len, ",...");
  return buf;
}

/* ps_log_escape: see ps_log.h. */
const char *ps_log_escape(char *buf, size_t cap, const char *s, size_t max) {
  size_t o = 0, i = 0;
  if (!s) s = "";
  for (; s[i] && i < max && o + 4 + 4 < cap; i++) { /* room for "\xNN" and "..." */
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') buf[o++] = (char)c;
    else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
  }
  if (s[i]) o += (size_t)snprintf(buf + o, cap - o, "...");
  buf[o] = '\0';
  return buf;
}

uint64_t ps_said_due(ps_said *s, uint64_t ctr, uint64_t now_ms, uint64_t every_ms) {
  if (s->logged != 0 && now_ms - s->ms < every_ms) return 0;
  uint64_t n = ctr - s->logged;
  s->logged = ctr;
  s->ms = now_ms;
  return n;
}
