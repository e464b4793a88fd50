/* psd_coord: partition progress, claims and the persisted clock table on
 * the coordinator shard (see psd_coord.h). */
#include "psd_coord.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_log.h"

/* The timer's saves are written by libuv's thread pool: the loop only
 * serializes the table (psd_clock_save), so a save's write + two fsyncs
 * (milliseconds, tens of them when the disk is busy, e.g. with the redo
 * log of durability sync) never stall the loop.  One save at a time; a
 * synchronous save (psd_coord_save, at stop) first waits for the one in
 * flight. */
typedef struct psd_coord_bg {
  uv_work_t work;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int busy;      /* queued or running, until its after-callback (loop) */
  int done;      /* its write finished (under mu) */
  int retry;     /* the last background save failed: the next one writes */
  ps_errbuf said; /* the failure last logged (msg "": none) */
  int stopped;   /* psd_coord_stop ran while busy: the after-callback frees */
  int soon;      /* psd_coord_save_soon asked while busy: the after-callback
                    starts the next save at once */
  uv_timer_t *timer; /* the shard's save timer (that next save) */
  char *text;
  size_t len;
  int err;
  ps_errbuf eb;
  char tmp[4200], path[4200], dir[4200];
} psd_coord_bg;

/* coord_path writes DATA_DIR/coordinator.state (SUFFIX appended) to BUF. */
static void coord_path(const psd_shard *sh, const char *suffix, char *buf, size_t cap) {
  snprintf(buf, cap, "%s/coordinator.state%s", sh->me->data_dir, suffix);
}

/* coord_write_all writes LEN bytes of BUF to FD. */
static int coord_write_all(int fd, const char *buf, size_t len) {
  while (len) {
    ssize_t k = write(fd, buf, len);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    buf += k;
    len -= (size_t)k;
  }
  return 0;
}

/* coord_write_atomic replaces PATH by TEXT (LEN bytes): a temporary file,
 * fsync'd, renamed over it; the directory fsync'd.  0 or PS_EIO. */
static int coord_write_atomic(const char *tmp, const char *path, const char *dir,
                              const char *text, size_t len, ps_errbuf *eb) {
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ps_errf(eb, PS_EIO, "%s: cannot create: %s", tmp, strerror(errno));
  int bad = coord_write_all(fd, text, len) < 0 || fsync(fd) < 0;
  int why = errno;
  if (close(fd) < 0 && !bad) bad = 1, why = errno;
  if (!bad && rename(tmp, path) < 0) bad = 1, why = errno;
  if (bad) {
    unlink(tmp);
    return ps_errf(eb, PS_EIO, "%s: cannot write: %s", path, strerror(why));
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return 0;
}

/* coord_bg_wait waits for the background save in flight to finish its
 * write (loop thread). */
static void coord_bg_wait(psd_coord_bg *bg) {
  pthread_mutex_lock(&bg->mu);
  while (bg->busy && !bg->done) pthread_cond_wait(&bg->cv, &bg->mu);
  pthread_mutex_unlock(&bg->mu);
}

static void coord_bg_free(psd_coord_bg *bg) {
  pthread_mutex_destroy(&bg->mu);
  pthread_cond_destroy(&bg->cv);
  free(bg->text);
  free(bg);
}

/* psd_coord_save: see psd_coord.h. */
void psd_coord_save(psd_shard *sh, int force) {
  psd_coord_bg *bg = sh->coord_bg;
  if (bg) coord_bg_wait(bg);
  if (!sh->coordinator || !sh->clock ||
      (!force && !psd_clock_dirty(sh->clock) && !(bg && bg->retry)))
    return;
  char *text, tmp[4200], path[4200];
  size_t len;
  ps_errbuf eb;
  int err = psd_clock_save(sh->clock, &text, &len, &eb);
  if (err == 0) {
    coord_path(sh, ".tmp", tmp, sizeof tmp);
    coord_path(sh, "", path, sizeof path);
    err = coord_write_atomic(tmp, path, sh->me->data_dir, text, len, &eb);
    free(text);
  }
  if (bg && err == 0) bg->retry = 0;
  if (err < 0) ps_warn("coordinator state not saved (retried): %s", eb.msg);
}

/* coord_bg_said logs a background save's failure MSG when it differs
 * from the one logged last (the timer retries every PSD_COORD_SAVE_MS:
 * one line per cause, not ten a second), and with MSG NULL that saves
 * work again after one was logged. */
static void coord_bg_said(psd_coord_bg *bg, const char *msg) {
  if (!msg) {
    if (bg->said.msg[0]) ps_info("coordinator state saved again");
    bg->said.msg[0] = 0;
    return;
  }
  if (!strcmp(bg->said.msg, msg)) return;
  snprintf(bg->said.msg, sizeof bg->said.msg, "%s", msg);
  ps_warn("coordinator state not saved (retried every %u ms, logged again when the cause "
          "changes): %s",
          (unsigned)PSD_COORD_SAVE_MS, msg);
}

/* coord_bg_work writes a save (a thread of libuv's pool). */
static void coord_bg_work(uv_work_t *w) {
  psd_coord_bg *bg = w->data;
  int err = coord_write_atomic(bg->tmp, bg->path, bg->dir, bg->text, bg->len, &bg->eb);
  pthread_mutex_lock(&bg->mu);
  bg->err = err;
  bg->done = 1;
  pthread_cond_broadcast(&bg->cv);
  pthread_mutex_unlock(&bg->mu);
}

/* coord_bg_after ends a background save (loop thread). */
static void coord_on_save_timer(uv_timer_t *t);

static void coord_bg_after(uv_work_t *w, int status) {
  psd_coord_bg *bg = w->data;
  bg->busy = 0;
  free(bg->text);
  bg->text = NULL;
  if (status < 0 || bg->err < 0) {
    bg->retry = 1;
    coord_bg_said(bg, status < 0 ? "the save was cancelled" : bg->eb.msg);
  } else {
    coord_bg_said(bg, NULL);
  }
  if (bg->stopped) {
    coord_bg_free(bg);
  } else if (bg->soon) {
    bg->soon = 0;
    uv_timer_start(bg->timer, coord_on_save_timer, 0, PSD_COORD_SAVE_MS);
  }
}

/* coord_on_save_timer saves a changed table, written off the loop. */
static void coord_on_save_timer(uv_timer_t *t) {
  psd_shard *sh = t->data;
  psd_coord_bg *bg = sh->coord_bg;
  if (!bg) {
    psd_coord_save(sh, 0);
    return;
  }
  if (bg->busy || (!psd_clock_dirty(sh->clock) && !bg->retry)) return;
  ps_errbuf eb;
  if (psd_clock_save(sh->clock, &bg->text, &bg->len, &eb) < 0) {
    coord_bg_said(bg, eb.msg);
    return;
  }
  bg->retry = 0;
  bg->busy = 1;
  bg->done = 0;
  bg->work.data = bg;
  if (uv_queue_work(sh->loop, &bg->work, coord_bg_work, coord_bg_after) != 0) {
    bg->busy = 0;
    free(bg->text);
    bg->text = NULL;
    bg->retry = 1;
  }
}

/* coord_read reads PATH into *TEXT (malloc'd, NUL-terminated); 1 when it
 * does not exist. */
static int coord_read(const char *path, char **text, ps_errbuf *eb) {
  FILE *f = ps_config_fopen(path); /* a FIFO there reads as empty, not forever */
  if (!f && errno == ENOENT) return 1;
  if (!f) return ps_errf(eb, PS_EIO, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0, k;
  char *b = malloc(cap + 1);
  while (b && (k = fread(b + n, 1, cap - n, f)) > 0) {
    n += k;
    if (n == cap) {
      char *nb = cap < (1u << 26) ? realloc(b, 2 * cap + 1) : NULL;
      if (!nb) free(b);
      b = nb;
      cap *= 2;
    }
  }
  int rd = ferror(f);
  fclose(f);
  if (!b) return ps_errf(eb, PS_EFORMAT, "%s: too large or out of memory", path);
  if (rd) {
    free(b);
    return ps_errf(eb, PS_EIO, "%s: read error", path);
  }
  b[n] = 0;
  *text = b;
  return 0;
}

/* psd_coord_restore: see psd_coord.h. */
int psd_coord_restore(psd_shard *sh, ps_errbuf *eb) {
  if (!sh->coordinator || !sh->clock) return 0;
  char path[4200], *text = NULL;
  coord_path(sh, "", path, sizeof path);
  int err = coord_read(path, &text, eb);
  if (err < 0) return err;
  if (err == 0) {
    ps_errbuf why;
    uv_update_time(sh->loop);
    err = psd_clock_load(sh->clock, text, uv_now(sh->loop), &why);
    free(text);
    if (err == PS_ECONFIG) { /* data.partitions changed: that job's progress does not apply */
      char old[4300];
      snprintf(old, sizeof old, "%s.old", path);
      if (rename(path, old) < 0)
        return ps_errf(eb, PS_EIO, "%s: %s; cannot move it to %s: %s", path, why.msg, old,
                       strerror(errno));
      ps_warn("coordinator state %s: %s: the saved job's progress does not apply, kept as %s; "
              "the next workers start a new job (every partition at epoch 1)", path, why.msg,
              old);
    } else if (err < 0) {
      return ps_errf(eb, err, "%s: %s", path, why.msg);
    } else {
      ps_info("coordinator state restored from %s: %zu epochs counted, %u partitions", path,
              psd_clock_nepochs(sh->clock), psd_clock_nparts(sh->clock));
    }
  }
  psd_coord_bg *bg = calloc(1, sizeof *bg);
  if (bg) { /* without it the timer saves on the loop, as psd_coord_save */
    pthread_mutex_init(&bg->mu, NULL);
    pthread_cond_init(&bg->cv, NULL);
    coord_path(sh, ".tmp", bg->tmp, sizeof bg->tmp);
    coord_path(sh, "", bg->path, sizeof bg->path);
    snprintf(bg->dir, sizeof bg->dir, "%s", sh->me->data_dir);
    bg->timer = &sh->save_timer;
  }
  sh->coord_bg = bg;
  uv_timer_init(sh->loop, &sh->save_timer);
  sh->save_timer.data = sh;
  sh->save_timer_on = 1;
  uv_timer_start(&sh->save_timer, coord_on_save_timer, PSD_COORD_SAVE_MS, PSD_COORD_SAVE_MS);
  return 0;
}

/* psd_coord_save_soon: see psd_coord.h.  A save in flight is not waited
 * for: its after-callback starts the next one at once (several workers
 * register within a millisecond, and each rank must be on disk before a
 * crash can take it). */
void psd_coord_save_soon(psd_shard *sh) {
  if (!sh->save_timer_on) return;
  if (sh->coord_bg && sh->coord_bg->busy) sh->coord_bg->soon = 1;
  else uv_timer_start(&sh->save_timer, coord_on_save_timer, 0, PSD_COORD_SAVE_MS);
}

/* psd_coord_stop: see psd_coord.h. */
void psd_coord_stop(psd_shard *sh) {
  if (!sh->save_timer_on) return;
  psd_coord_save(sh, 0); /* after the background save in flight, if any */
  psd_coord_bg *bg = sh->coord_bg;
  sh->coord_bg = NULL;
  if (bg && bg->busy) bg->stopped = 1; /* its after-callback frees it */
  else if (bg) coord_bg_free(bg);
  uv_timer_stop(&sh->save_timer);
  uv_close((uv_handle_t *)&sh->save_timer, NULL); /* closed with the loop's next run */
  sh->save_timer_on = 0;
}

/* coord_pos converts a wire position. */
static psd_part_pos coord_pos(const Ps__PartProgress *p) {
  return (psd_part_pos){.part = p->partition, .epoch = p->epoch, .offset = p->offset,
                        .started = p->started, .size = p->size, .retrained = p->retrained};
}

/* psd_coord_heartbeat: see psd_coord.h.  Progress first (a finished
 * partition is reported in the same request that claims the next). */
int psd_coord_heartbeat(psd_shard *sh, const Ps__HeartbeatRequest *req,
                        Ps__HeartbeatReply *reply, uint64_t now_ms, ps_errbuf *eb) {
  if (!sh->coordinator || !sh->clock) return 0;
  if (req->n_progress && !(reply->refused = calloc(req->n_progress, sizeof *reply->refused)))
    return ps_errf(eb, PS_ENOMEM, "out of memory");
  for (size_t i = 0; i < req->n_progress; i++) {
    psd_part_pos pos = coord_pos(req->progress[i]);
    ps_errbuf why;
    int err = psd_clock_progress(sh->clock, req->worker, &pos, now_ms, &why);
    if (err == PS_ENOENT) {
      ps_info("worker %u: progress refused: %s", req->worker, why.msg);
      reply->refused[reply->n_refused++] = pos.part;
    } else if (err < 0) {
      return ps_errf(eb, err, "worker %u: %s", req->worker, why.msg);
    }
  }
  if (!req->claim) return 0;
  psd_part_pos pos;
  int done = 0, got = psd_clock_claim(sh->clock, req->worker, req->model, req->epochs,
                                      req->data_size, now_ms, &pos, &done, eb);
  if (got < 0) return got;
  reply->job_done = done;
  reply->job_epochs = psd_clock_job_epochs(sh->clock);
  if (got == 1) {
    if (!(reply->granted = malloc(sizeof *reply->granted)))
      return ps_errf(eb, PS_ENOMEM, "out of memory");
    ps__part_progress__init(reply->granted);
    reply->granted->partition = pos.part;
    reply->granted->epoch = pos.epoch;
    reply->granted->offset = reply->granted->started = pos.offset;
    reply->granted->size = pos.size;
    reply->start_clock = psd_clock_slowest(sh->clock, req->model);
  }
  return 0;
}

/* psd_coord_heartbeat_release: see psd_coord.h. */
void psd_coord_heartbeat_release(Ps__HeartbeatReply *reply) {
  free(reply->granted);
  free(reply->refused);
  reply->granted = NULL;
  reply->refused = NULL;
  reply->n_refused = 0;
}

/* psd_coord_list: see psd_coord.h. */
int psd_coord_list(psd_shard *sh, Ps__ListWorkersReply *reply, ps_errbuf *eb) {
  if (!sh->coordinator || !sh->clock) return 0;
  uint32_t np = psd_clock_nparts(sh->clock);
  size_t ne = psd_clock_nepochs(sh->clock);
  reply->job_epochs = psd_clock_job_epochs(sh->clock);
  reply->data_size = psd_clock_data_size(sh->clock);
  if (psd_clock_job_model(sh->clock)) /* borrowed: packed before the loop moves on */
    reply->job_model = (char *)psd_clock_job_model(sh->clock);
  Ps__PartitionInfo *pi = calloc(np ? np : 1, sizeof *pi);
  Ps__PartitionInfo **pp = calloc(np ? np : 1, sizeof *pp);
  Ps__PartProgress *pg = calloc(np ? np : 1, sizeof *pg);
  Ps__EpochInfo *ei = calloc(ne ? ne : 1, sizeof *ei);
  Ps__EpochInfo **ep = calloc(ne ? ne : 1, sizeof *ep);
  if (!pi || !pp || !pg || !ei || !ep) {
    free(pi), free(pp), free(pg), free(ei), free(ep);
    return ps_errf(eb, PS_ENOMEM, "out of memory listing partitions");
  }
  for (uint32_t i = 0; i < np; i++) {
    psd_part_info in;
    psd_clock_part_info(sh->clock, i, &in);
    ps__partition_info__init(&pi[i]);
    ps__part_progress__init(&pg[i]);
    pg[i].partition = in.pos.part, pg[i].epoch = in.pos.epoch, pg[i].offset = in.pos.offset;
    pg[i].started = in.pos.started, pg[i].size = in.pos.size;
    pi[i].pos = &pg[i];
    pi[i].owned = in.owner != PSD_CLOCK_NOBODY;
    pi[i].owner = pi[i].owned ? in.owner : 0;
    pi[i].active = in.active;
    pp[i] = &pi[i];
  }
  for (size_t e = 0; e < ne; e++) {
    psd_epoch_info in;
    psd_clock_epoch_info(sh->clock, e, &in);
    ps__epoch_info__init(&ei[e]);
    ei[e].epoch = in.epoch;
    ei[e].trained = in.trained;
    ei[e].retrained = in.retrained;
    ei[e].handovers = in.handovers;
    ei[e].done_parts = in.done_parts;
    ep[e] = &ei[e];
  }
  if (!np) free(pi), free(pg), free(pp), pp = NULL;
  if (!ne) free(ei), free(ep), ep = NULL;
  reply->partitions = pp;
  reply->n_partitions = np;
  reply->epochs = ep;
  reply->n_epochs = ne;
  return 0;
}

/* psd_coord_list_release: see psd_coord.h (the arrays psd_coord_list made
 * are each one block, reached from the first element). */
void psd_coord_list_release(Ps__ListWorkersReply *reply) {
  if (reply->partitions) {
    free(reply->partitions[0]->pos);
    free(reply->partitions[0]);
    free(reply->partitions);
  }
  if (reply->epochs) {
    free(reply->epochs[0]);
    free(reply->epochs);
  }
  reply->partitions = NULL;
  reply->epochs = NULL;
  reply->n_partitions = reply->n_epochs = 0;
}
