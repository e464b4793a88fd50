/* psw_progress: progress lines on stderr and the metrics CSV. */
#include "psw_progress.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps_log.h"
#include "ps_time.h"

#define PSW_PROGRESS_TTY_MS 200

/* progress_eta formats S seconds as "1h02m", "3m07s" or "12s" into BUF. */
static const char *progress_eta(char *buf, size_t len, double s) {
  long t = s > 0 && s < 1e7 ? (long)(s + 0.5) : 0;
  if (t >= 3600) snprintf(buf, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else if (t >= 60) snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
  else snprintf(buf, len, "%lds", t);
  return buf;
}

/* progress_say writes one progress line: on stderr as log lines are
 * written (ps_log_raw: dropped when a full pipe cannot take it, rather
 * than holding the step), on any other stream as it is. */
__attribute__((format(printf, 2, 3))) static void progress_say(psw_progress *p,
                                                               const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
  if (p->out == stderr) {
    fflush(stderr);
    ps_log_raw(line, len);
  } else {
    fwrite(line, 1, len, p->out);
    fflush(p->out);
  }
}

/* psw_progress_init: see psw_progress.h. */
void psw_progress_init(psw_progress *p, FILE *out, uint32_t rank, int quiet) {
  memset(p, 0, sizeof *p);
  p->out = out;
  p->tty = isatty(fileno(out));
  p->quiet = quiet;
  p->rank = rank;
}

/* psw_progress_step: see psw_progress.h. */
void psw_progress_step(psw_progress *p, const psw_progress_sample *s) {
  if (p->quiet) return;
  int64_t now = ps_now_ms();
  int64_t every = p->tty ? PSW_PROGRESS_TTY_MS : PSW_PROGRESS_PLAIN_MS;
  if (p->last_ms && now - p->last_ms < every && s->step != s->steps) return;
  if (!p->tty && s->step == s->steps) return; /* the epoch line follows */
  p->last_ms = now;
  char eta[32];
  progress_say(p, "%sworker %u: epoch %u/%u step %llu/%llu loss %.4f acc %.4f %.0f samples/s ETA %s%s",
               p->tty ? "\r" : "", p->rank, s->epoch, s->epochs, (unsigned long long)s->step,
               (unsigned long long)s->steps, s->loss, s->accuracy, s->samples_per_sec,
               progress_eta(eta, sizeof eta, s->eta_s), p->tty ? "\033[K" : "\n");
  p->live = p->tty;
}

/* psw_progress_end: see psw_progress.h. */
void psw_progress_end(psw_progress *p) {
  if (!p->live) return;
  progress_say(p, "\n");
  p->live = 0;
}

/* progress_fig writes V as "%.4f" into BUF, or "-" when no figure ran
 * (NAN: no test set evaluated), so that nothing reads as one. */
static const char *progress_fig(char *buf, size_t cap, double v) {
  if (isfinite(v)) snprintf(buf, cap, "%.4f", v);
  else snprintf(buf, cap, "-");
  return buf;
}

/* psw_progress_epoch: see psw_progress.h. */
void psw_progress_epoch(psw_progress *p, const psw_epoch_stats *e) {
  if (p->quiet) return;
  char tl[32], ta[32];
  progress_say(p,
               "%sworker %u: epoch %u done: step %llu train loss %.4f acc %.4f, test loss %s "
               "acc %s, %.0f samples/s, %.1f s\n",
               p->live ? "\r\033[K" : "", p->rank, e->epoch, (unsigned long long)e->step,
               e->train_loss, e->train_accuracy, progress_fig(tl, sizeof tl, e->test_loss),
               progress_fig(ta, sizeof ta, e->test_accuracy), e->samples_per_sec, e->wall_s);
  p->live = 0;
}

/* psw_metrics_append: see psw_progress.h. */
int psw_metrics_append(const char *path, const psw_epoch_stats *e, ps_errbuf *eb) {
  FILE *f = fopen(path, "a");
  if (!f) return ps_errf(eb, PS_EIO, "metrics file '%s': %s", path, strerror(errno));
  int err = 0;
  if (fseek(f, 0, SEEK_END) == 0 && ftell(f) == 0) fputs(PSW_METRICS_HEADER "\n", f);
  fprintf(f, "%u,%llu,%.6f,%.6f,%.6f,%.6f,%.1f,%.3f\n", e->epoch, (unsigned long long)e->step,
          e->train_loss, e->train_accuracy, e->test_loss, e->test_accuracy, e->samples_per_sec,
          e->wall_s);
  if (ferror(f)) err = ps_errf(eb, PS_EIO, "metrics file '%s': write failed", path);
  if (fclose(f) != 0 && !err)
    err = ps_errf(eb, PS_EIO, "metrics file '%s': %s", path, strerror(errno));
  return err;
}
