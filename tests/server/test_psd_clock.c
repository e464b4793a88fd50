/* Tests for psd_clock: clock tables, parking, leases and timeouts, with
 * time passed in by hand (no sockets, no loop). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_test.h"
#include "psd_clock.h"

/* A parked pull of a test and what its release said. */
typedef struct tpark {
  psd_park p;
  int released, status;
  char msg[512];
} tpark;

static void tpark_fn(psd_done *d, int status, const char *msg) {
  tpark *t = d->arg;
  t->released++;
  t->status = status;
  snprintf(t->msg, sizeof t->msg, "%s", msg ? msg : "");
}

static void tpark_init(tpark *t) {
  memset(t, 0, sizeof *t);
  t->p.done.fn = tpark_fn;
  t->p.done.arg = t;
}

/* Leases seen expiring (on_expire), the last one's worker. */
static int texpired;
static uint32_t texpired_worker;
static void texpire(void *arg, uint32_t worker, uint64_t silent_ms) {
  (void)arg;
  ck_assert_uint_ge(silent_ms, 1000);
  texpired++;
  texpired_worker = worker;
}

static psd_clock *tclock(uint32_t staleness) {
  psd_clock_opts o = {.heartbeat_ms = 100, .lease_ms = 1000, .pull_timeout_ms = 5000,
                      .world_size = 3, .nparts = 8, .on_expire = texpire};
  texpired = 0;
  psd_clock *c;
  ps_errbuf eb;
  ck_assert_int_eq(psd_clock_new(&c, &o, &eb), 0);
  ck_assert_int_eq(psd_clock_set_model(c, "m", staleness, 0, &eb), 0);
  return c;
}

/* fixed_of says whether the table lists worker ID as a live fixed rank. */
static int fixed_of(const psd_clock *c, uint32_t id, uint64_t now_ms) {
  for (size_t i = 0; i < psd_clock_nworkers(c); i++) {
    psd_worker_info in;
    psd_clock_worker(c, i, now_ms, &in);
    if (in.id == id) return in.fixed;
  }
  return -1;
}

/* fixed_beat: fixed rank ID of model M beats at NOW_MS (invariant 14). */
static void fixed_beat(psd_clock *c, uint32_t id, const char *m, uint64_t now_ms) {
  ps_errbuf eb;
  ck_assert_int_eq(psd_clock_heartbeat(c, id, m, 0, 0, 0, "h", "cpu", now_ms, &eb), 0);
  psd_clock_set_pid(c, id, 100 + id);
  psd_clock_set_fixed(c, id, 1);
}

/* Invariant 14: while live fixed ranks of a model beat, its registrations
 * are refused, naming them; another model's are not; one that finished
 * or whose lease expired blocks nothing.  A restored table refuses them
 * at once (the marks are saved: invariant 10).  Registrations used to
 * take a rank and train every partition on top of the fixed ranks'
 * share, and after a restart until a fixed rank beat again. */
START_TEST(test_register_refused_beside_fixed) {
  psd_clock *c = tclock(PSD_CLOCK_ASP);
  ps_errbuf eb;
  uint32_t rank;
  uint64_t start;
  fixed_beat(c, 0, "m", 10);
  fixed_beat(c, 2, "m", 10);
  ck_assert_int_eq(fixed_of(c, 0, 10), 1);
  ck_assert_int_eq(psd_clock_register(c, "m", "h2", 200, "cpu", 20, &rank, &start, &eb),
                   PS_EEXIST);
  ck_assert_msg(strstr(eb.msg, "model 'm' is trained by 2 live fixed ranks (psw --rank: ranks "
                               "0, 2)"), "%s", eb.msg);
  ck_assert_uint_eq(psd_clock_nworkers(c), 2); /* nothing recorded */
  /* a coordinator restart (a kill -9 after the save): the restored table
   * knows them fixed before any of their beats, and refuses at once */
  char *text;
  size_t len;
  ck_assert_int_eq(psd_clock_save(c, &text, &len, &eb), 0);
  psd_clock *d = tclock(PSD_CLOCK_ASP);
  ck_assert_int_eq(psd_clock_load(d, text, 30, &eb), 0);
  free(text);
  psd_clock_grace(d, 30);
  ck_assert_int_eq(fixed_of(d, 2, 30), 1);
  ck_assert_int_eq(psd_clock_register(d, "m", "h2", 200, "cpu", 30, &rank, &start, &eb),
                   PS_EEXIST);
  ck_assert_msg(strstr(eb.msg, "model 'm' is trained by 2 live fixed ranks (psw --rank: ranks "
                               "0, 2)"), "%s", eb.msg);
  ck_assert_uint_eq(psd_clock_nworkers(d), 2);
  psd_clock_free(d);
  /* another model's worker registers; a registered worker is never fixed */
  ck_assert_int_eq(psd_clock_register(c, "n", "h3", 300, "cpu", 30, &rank, &start, &eb), 0);
  ck_assert_uint_eq(rank, 1);
  psd_clock_set_fixed(c, 1, 1);
  ck_assert_int_eq(fixed_of(c, 1, 30), 0);
  /* rank 0 finished: rank 2 still blocks */
  psd_clock_leave(c, 0, 40, 1);
  ck_assert_int_eq(fixed_of(c, 0, 40), 0);
  ck_assert_int_eq(psd_clock_register(c, "m", "h2", 200, "cpu", 50, &rank, &start, &eb),
                   PS_EEXIST);
  ck_assert_msg(strstr(eb.msg, "1 live fixed rank (psw --rank: rank 2)"), "%s", eb.msg);
  /* rank 2's lease expires (silent since 10): the model is free */
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "n", 0, 0, 0, "h3", "cpu", 900, &eb), 0);
  ck_assert_int_eq(psd_clock_register(c, "m", "h2", 200, "cpu", 1200, &rank, &start, &eb), 0);
  ck_assert_uint_eq(rank, 2); /* a died rank goes first */
  psd_clock_free(c);
}
END_TEST

/* treg2 registers pids 10 and 11 on host h as ranks 0 and 1 at time 0. */
static void treg2(psd_clock *c) {
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  for (uint32_t i = 0; i < 2; i++) {
    ck_assert_int_eq(psd_clock_register(c, "m", "h", 10 + i, "cpu", 0, &r, &sc, &eb), 0);
    ck_assert_uint_eq(r, i);
  }
}

/* BSP: a worker one step ahead parks until the other pushes. */
START_TEST(test_bsp_parks_until_push) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 20, &eb), 0); /* w0 clock 1 */
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 1, 20, &a.p, &eb), 1);
  ck_assert_int_eq(a.released, 0);
  psd_clock_stats st;
  ck_assert_int_eq(psd_clock_stats_of(c, "m", &st), 0);
  ck_assert_uint_eq(st.parked, 1);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 0, 30, &eb), 0); /* w1 clock 1 */
  ck_assert_int_eq(a.released, 1);
  ck_assert_int_eq(a.status, 0);
  ck_assert_int_eq(psd_clock_stats_of(c, "m", &st), 0);
  ck_assert_uint_eq(st.parked, 0);
  ck_assert_uint_eq(st.max_gap, 0);
  ck_assert_uint_eq(st.parked_total, 1);
  /* a model submitted anew counts again (an asp run's gap would read as
   * a broken bound under the bsp that replaced it) */
  ck_assert_int_eq(psd_clock_set_model(c, "m", PSD_CLOCK_ASP, 40, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 1, 40, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 2, 40, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 3, 40, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_stats_of(c, "m", &st), 0);
  ck_assert_uint_gt(st.max_gap, 0);
  psd_clock_model_fresh(c, "m");
  ck_assert_int_eq(psd_clock_stats_of(c, "m", &st), 0);
  ck_assert_uint_eq(st.max_gap, 0);
  ck_assert_uint_eq(st.parked_total, 0);
  ck_assert_uint_eq(st.timeouts, 0);
  psd_clock_free(c);
}
END_TEST

/* A worker that steps out (nothing to train for now) releases the pulls
 * waiting on it and keeps its lease; its next pull enters it again, at
 * its own clock, and holds the others back as before. */
START_TEST(test_step_out) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  tpark a, b;
  tpark_init(&a);
  tpark_init(&b);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 20, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 1, 20, &a.p, &eb), 1); /* waits for w1 */
  ck_assert_uint_eq(psd_clock_step_out(c, 1, 0, 30), 1);
  ck_assert_int_eq(a.released, 1);
  ck_assert_int_eq(a.status, 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), -1);
  ck_assert_uint_eq(psd_clock_step_out(c, 1, 0, 40), 0); /* in no table now */
  ck_assert_uint_eq(psd_clock_step_out(c, 7, 0, 40), 0); /* unknown */
  ck_assert_int_eq(psd_clock_expired(c, 1), 0);
  /* w0 runs ahead alone */
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 1, 50, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 2, 50, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 2, 60, &eb), 0);
  /* w1 comes back at clock 1: served at once, and w0 waits for it again */
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 1, 70, &b.p, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), 1);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 3, 70, &a.p, &eb), 1);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 1, 80, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 2, 90, &eb), 0);
  ck_assert_int_eq(a.released, 2);
  /* a late step-out of clock 0, overtaken by its return: it stays in */
  ck_assert_uint_eq(psd_clock_step_out(c, 1, 0, 95), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), 3);
  /* its lease ran on: a heartbeat keeps it alive, no expiry */
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "m", 3, 0, 0, "h", "cpu", 900, &eb), 0);
  psd_clock_tick(c, 1500);
  ck_assert_int_eq(texpired, 1); /* w0 only (silent since 70) */
  ck_assert_uint_eq(texpired_worker, 0);
  ck_assert_int_eq(psd_clock_expired(c, 1), 0);
  /* a heartbeat's pid (a fixed rank never registers) shows in status */
  psd_clock_set_pid(c, 1, 4242);
  psd_clock_set_pid(c, 1, 0); /* not said: kept */
  psd_clock_set_pid(c, 9, 77); /* unknown: ignored */
  int seen = 0;
  for (size_t i = 0; i < psd_clock_nworkers(c); i++) {
    psd_worker_info in;
    psd_clock_worker(c, i, 1500, &in);
    if (in.id != 1) continue;
    seen = 1;
    ck_assert_uint_eq(in.pid, 4242);
  }
  ck_assert(seen);
  psd_clock_free(c);
}
END_TEST

/* A worker's word that it went on past a lost push (psd_clock_moved_on,
 * invariant 11) that arrives after it stepped out of the tables at or
 * past that clock changes nothing: the push it stands for came before the
 * step-out, and the worker comes back at its next pull, at a clock of its
 * own (a rejoiner jumps to the slowest live one).  It used to enter the
 * worker again at the lost push's clock, behind its own next pull: under
 * bsp that pull waited for the worker itself ("slowest live worker 1 at
 * clock 81") for ever.  A word about a push after its return raises its
 * clock as ever, even below the step-out's clock. */
START_TEST(test_moved_on_after_step_out) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 20, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 0, 20, &eb), 0); /* both at 1 */
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 1, 30, &eb), 0); /* w1's push of 1 is lost */
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 2, 30, &a.p, &eb), 1); /* waits for w1 */
  /* w1 rejoins: it steps out up to its clock (2) + 1, and w0 goes on */
  ck_assert_uint_eq(psd_clock_step_out(c, 1, 3, 40), 1);
  ck_assert_int_eq(a.released, 1);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 2, 50, &eb), 0);
  ck_assert_uint_eq(psd_clock_slowest(c, "m"), 3); /* the grant's start clock */
  /* the word it still owed (clock 2), then its pull at the grant's 3 */
  ck_assert_int_eq(psd_clock_moved_on(c, "m", 1, 2, 60, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), -1);
  tpark b;
  tpark_init(&b);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 3, 60, &b.p, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), 3);
  /* back, at 3: a push of step 3 lost is said and raises it */
  ck_assert_int_eq(psd_clock_moved_on(c, "m", 1, 4, 70, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), 4);
  /* a step-out past the return's clock (no jump: it pulls at its own
   * clock, below the step-out's), then a push lost: said, it counts */
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 3, 80, &eb), 0);
  ck_assert_uint_eq(psd_clock_step_out(c, 1, 5, 90), 1);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 4, 100, &b.p, &eb), 0);
  ck_assert_int_eq(psd_clock_moved_on(c, "m", 1, 5, 110, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), 5);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 5, 110, &b.p, &eb), 1); /* w0 is at 4 */
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 4, 120, &eb), 0);
  ck_assert_int_eq(b.released, 1);
  ck_assert_int_eq(b.status, 0);
  psd_clock_free(c);
}
END_TEST

/* The same after an expiry (ssp, staleness 2): w1, declared dead,
 * registers again while w0 is far ahead, which enters it provisionally at
 * w0's clock (the slowest live); its step-out, at its own clock, leaves
 * that entry in.  The word about the push it lost before the expiry must
 * not set that entry down to its old clock: its pull at the grant's clock
 * would wait for itself.  (Before: parked, "slowest live worker 1".) */
START_TEST(test_moved_on_after_rejoin_provisional) {
  psd_clock *c = tclock(2);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  uint32_t r0, r1;
  uint64_t start;
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 100, "cpu", 0, &r0, &start, &eb), 0);
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 101, "cpu", 0, &r1, &start, &eb), 0);
  ck_assert_uint_eq(r1, 1);
  ck_assert_int_eq(psd_clock_pull(c, "m", r0, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", r1, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", r1, 0, 20, &eb), 0); /* its push of 1 is lost */
  for (uint64_t k = 0; k < 3; k++) ck_assert_int_eq(psd_clock_pushed(c, "m", r0, k, 500, &eb), 0);
  ck_assert_int_eq(psd_clock_heartbeat(c, r0, "m", 3, 0, 0, "h", "cpu", 1500, &eb), 0);
  psd_clock_tick(c, 1500); /* w1 silent past its lease */
  ck_assert_int_eq(psd_clock_expired(c, r1), 1);
  for (uint64_t k = 3; k < 50; k++) ck_assert_int_eq(psd_clock_pushed(c, "m", r0, k, 1600, &eb), 0);
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 101, "cpu", 1700, &r1, &start, &eb), 0);
  ck_assert_uint_eq(r1, 1);
  ck_assert_uint_eq(start, 50);
  ck_assert_uint_eq(psd_clock_step_out(c, r1, 3, 1700), 0); /* its clock 2, + 1 */
  ck_assert_int_eq(psd_clock_moved_on(c, "m", r1, 2, 1710, &eb), 0);
  tpark b;
  tpark_init(&b);
  ck_assert_int_eq(psd_clock_pull(c, "m", r1, 50, 1710, &b.p, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", r1), 50);
  psd_clock_free(c);
}
END_TEST

/* psd_clock_silent_ms (an aggregator's conditional leave): unknown
 * workers have no last word; a request is one, a pull parked for the
 * worker is not, its release is. */
START_TEST(test_silent_ms) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 100), UINT64_MAX);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 0, 100, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 0, 100, &a.p, &eb), 0);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 350), 250);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 50), 0); /* a clock behind the table's */
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 400, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 1, 400, &a.p, &eb), 1); /* parked for w1 */
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 700), 300);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 0, 800, &eb), 0); /* releases w0's pull */
  ck_assert_int_eq(a.released, 1);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 900), 100);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 1, 900), 100);
  psd_clock_free(c);
}
END_TEST

/* psd_clock_silent_ms does not count the loop's stalls (an aggregator's
 * leave read right after one would drop a worker whose beats waited
 * unread behind it): a stall since the worker's last word is no silence,
 * one before it changes nothing, and its next word clears the credit. */
START_TEST(test_silent_ms_stall) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 100, &eb), 0);
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "m", 0, 0, 0, "h", "cpu", 100, &eb), 0);
  psd_clock_stalled(c, 5000, 5200); /* the loop ran nothing from 200 to 5200 */
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 5200), 100);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 5500), 400);
  /* w1's beat read after the stall: a stall then (the part since 5300) */
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "m", 0, 0, 0, "h", "cpu", 5300, &eb), 0);
  psd_clock_stalled(c, 1000, 6500);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 1, 6500), 200);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 6500), 400); /* 6400, 6000 of them stalls */
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 6600, &eb), 0);
  ck_assert_uint_eq(psd_clock_silent_ms(c, 0, 7000), 400);
  /* status still shows the whole age */
  psd_worker_info in;
  psd_clock_worker(c, 1, 6500, &in);
  ck_assert_uint_eq(in.age_ms, 1200);
  psd_clock_free(c);
}
END_TEST

/* SSP s=2: up to 2 clocks ahead is served, 3 parks; the max gap is 2. */
START_TEST(test_ssp_bound) {
  psd_clock *c = tclock(2);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 0, 0, &a.p, &eb), 0);
  for (uint64_t k = 0; k < 2; k++) {
    ck_assert_int_eq(psd_clock_pushed(c, "m", 0, k, 1, &eb), 0);
    ck_assert_int_eq(psd_clock_pull(c, "m", 0, k + 1, 1, &a.p, &eb), 0);
  }
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 2, 1, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 3, 1, &a.p, &eb), 1);
  psd_clock_stats st;
  psd_clock_stats_of(c, "m", &st);
  ck_assert_uint_eq(st.max_gap, 2);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 0, 2, &eb), 0); /* w1 clock 1: 3 - 1 = 2 */
  ck_assert_int_eq(a.released, 1);
  ck_assert_int_eq(a.status, 0);
  psd_clock_stats_of(c, "m", &st);
  ck_assert_uint_eq(st.max_gap, 2);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 0), 3); /* pushed step 2 */
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), 1);
  /* a pull ahead (overlap) does not raise the puller's own clock */
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 4, 3, &a.p, &eb), 1);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 0), 3);
  psd_clock_cancel(c, &a.p);
  psd_clock_free(c);
}
END_TEST

/* ASP never parks; a model never declared is asp. */
START_TEST(test_asp_never_parks) {
  psd_clock *c = tclock(PSD_CLOCK_ASP);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 0, 0, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 100, 0, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "other", 0, 50, 0, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "other", 1, 0, 0, &a.p, &eb), 0);
  psd_clock_stats st;
  psd_clock_stats_of(c, "m", &st);
  ck_assert_uint_eq(st.max_gap, 100);
  ck_assert_uint_eq(st.parked_total, 0);
  psd_clock_free(c);
}
END_TEST

/* A lease expiring with pulls parked on the dead worker releases them;
 * the parked worker itself stays alive however long it waits. */
START_TEST(test_lease_expiry_releases) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  tpark a, b;
  tpark_init(&a);
  tpark_init(&b);
  ck_assert_int_eq(psd_clock_pull(c, "m", 2, 0, 0, &a.p, &eb), 0); /* w2 will die */
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 0, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 0, 0, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 1, 100, &a.p, &eb), 1);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 1, 100, &b.p, &eb), 1);
  ck_assert_uint_eq(psd_clock_next_ms(c, 100), 1000); /* w2's lease */
  psd_clock_tick(c, 999);
  ck_assert_int_eq(a.released + b.released, 0);
  psd_clock_tick(c, 1000);
  ck_assert_int_eq(a.released, 1);
  ck_assert_int_eq(b.released, 1);
  ck_assert_int_eq(a.status, 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 2), -1);
  psd_worker_info in;
  int seen_dead = 0, alive = 0;
  for (size_t i = 0; i < psd_clock_nworkers(c); i++) {
    psd_clock_worker(c, i, 1000, &in);
    if (in.id == 2) seen_dead = in.state == PSD_WORKER_DEAD;
    else alive += in.state == PSD_WORKER_ALIVE;
  }
  ck_assert(seen_dead);
  ck_assert_int_eq(alive, 2); /* w0, w1 waited in parked pulls: alive */
  psd_clock_free(c);
}
END_TEST

/* A parked pull times out with a message naming the slowest worker. */
START_TEST(test_parked_timeout) {
  psd_clock *c = tclock(1);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 0, 0, &a.p, &eb), 0);
  for (uint64_t k = 0; k < 3; k++) psd_clock_pushed(c, "m", 0, k, 0, &eb);
  /* w1 keeps heartbeating (alive) but never pushes */
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 3, 0, &a.p, &eb), 1);
  for (uint64_t t = 500; t < 5000; t += 500) {
    psd_clock_heartbeat(c, 1, "m", 0, 1.0f, 0, "h", "cpu", t, &eb);
    psd_clock_tick(c, t);
  }
  ck_assert_int_eq(a.released, 0);
  psd_clock_tick(c, 5000);
  ck_assert_int_eq(a.released, 1);
  ck_assert_int_eq(a.status, PS_ETIMEDOUT);
  ck_assert_msg(strstr(a.msg, "slowest live worker 1 is at clock 0"), "%s", a.msg);
  psd_clock_stats st;
  psd_clock_stats_of(c, "m", &st);
  ck_assert_uint_eq(st.timeouts, 1);
  ck_assert_uint_eq(st.max_gap, 0); /* only w1's pull at 0 was served */
  psd_clock_free(c);
}
END_TEST

/* A cancelled park never runs; release_all answers the rest. */
START_TEST(test_cancel_and_release_all) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  tpark a, b;
  tpark_init(&a);
  tpark_init(&b);
  psd_clock_pull(c, "m", 1, 0, 0, &a.p, &eb);
  psd_clock_pushed(c, "m", 0, 0, 0, &eb);
  psd_clock_pushed(c, "m", 0, 1, 0, &eb);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 2, 0, &a.p, &eb), 1);
  psd_clock_pushed(c, "m", 2, 5, 0, &eb);
  ck_assert_int_eq(psd_clock_pull(c, "m", 2, 6, 0, &b.p, &eb), 1);
  psd_clock_cancel(c, &a.p);
  psd_clock_release_all(c, PS_ESHUTDOWN, "bye");
  ck_assert_int_eq(a.released, 0);
  ck_assert_int_eq(b.released, 1);
  ck_assert_int_eq(b.status, PS_ESHUTDOWN);
  psd_clock_free(c);
}
END_TEST

/* Ranks: in registration order, the same one for a retry (past the world
 * size too), past the world size up to the cap (2 x 3 + 2) for a worker restarted while its old
 * lease lives, none beyond, and a dead worker's rank for a newcomer. */
START_TEST(test_register_ranks) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  ck_assert_int_eq(psd_clock_register(c, "m", "a", 10, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 0);
  ck_assert_int_eq(psd_clock_register(c, "m", "b", 11, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 1);
  ck_assert_int_eq(psd_clock_register(c, "m", "a", 10, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 0);
  ck_assert_int_eq(psd_clock_register(c, "m", "c", 12, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 2);
  for (uint32_t k = 3; k < 8; k++) {
    ck_assert_int_eq(psd_clock_register(c, "m", "d", 10 + k, "cpu", 0, &r, &sc, &eb), 0);
    ck_assert_uint_eq(r, k);
  }
  /* a retry past the world size too (it used to get a new rank, and the
   * worker took itself for replaced) */
  ck_assert_int_eq(psd_clock_register(c, "m", "d", 13, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 3);
  ck_assert_int_eq(psd_clock_register(c, "m", "e", 99, "cpu", 0, &r, &sc, &eb), PS_EEXIST);
  ck_assert_ptr_nonnull(strstr(eb.msg, "all 8 worker ids"));
  for (uint32_t k = 3; k < 8; k++) psd_clock_leave(c, k, 10, 1);
  /* ranks 0 and 2 keep pushing; rank 1 falls silent and expires */
  psd_clock_pushed(c, "m", 0, 6, 900, &eb);
  psd_clock_pushed(c, "m", 2, 4, 900, &eb);
  ck_assert_int_eq(psd_clock_register(c, "m", "d", 13, "cpu", 1200, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 1);
  ck_assert_uint_eq(sc, 5); /* the slowest live clock: rank 2 pushed step 4 */
  psd_clock_free(c);
}
END_TEST

/* A release callback that re-enters the table (a new pull that parks
 * again) leaves the table consistent. */
static psd_clock *reenter_clock;
static void reenter_fn(psd_done *d, int status, const char *msg) {
  (void)msg;
  tpark *t = d->arg;
  t->released++;
  t->status = status;
  if (t->released == 1) {
    ps_errbuf eb;
    psd_clock_pushed(reenter_clock, "m", 0, 1, 0, &eb);
    psd_clock_pushed(reenter_clock, "m", 0, 2, 0, &eb); /* w0 at 3 */
    t->status = psd_clock_pull(reenter_clock, "m", 0, 3, 0, &t->p, &eb);
  }
}

START_TEST(test_reentrant_release) {
  psd_clock *c = reenter_clock = tclock(0);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  a.p.done.fn = reenter_fn;
  psd_clock_pull(c, "m", 1, 0, 0, &a.p, &eb);
  psd_clock_pushed(c, "m", 0, 0, 0, &eb);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 1, 0, &a.p, &eb), 1);
  psd_clock_pushed(c, "m", 1, 0, 0, &eb); /* releases; the callback parks again */
  ck_assert_int_eq(a.released, 1);
  ck_assert_int_eq(a.status, 1);
  psd_clock_stats st;
  psd_clock_stats_of(c, "m", &st);
  ck_assert_uint_eq(st.parked, 1);
  psd_clock_pushed(c, "m", 1, 1, 0, &eb);
  psd_clock_pushed(c, "m", 1, 2, 0, &eb);
  ck_assert_int_eq(a.released, 2);
  psd_clock_free(c);
}
END_TEST

/* A registered worker holds BSP back before its first pull; one that
 * leaves releases the pull waiting on it and reads as expired. */
START_TEST(test_register_holds_leave_releases) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r0, r1;
  uint64_t sc;
  tpark a;
  tpark_init(&a);
  ck_assert_int_eq(psd_clock_register(c, "m", "a", 10, "cpu", 0, &r0, &sc, &eb), 0);
  ck_assert_int_eq(psd_clock_register(c, "m", "b", 11, "cpu", 0, &r1, &sc, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", r1), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", r0, 0, 10, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", r0, 0, 20, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", r0, 1, 20, &a.p, &eb), 1); /* r1 never pulled */
  ck_assert_int_eq(psd_clock_expired(c, r1), 0);
  psd_clock_leave(c, r1, 30, 1);
  psd_worker_info in;
  for (size_t i = 0; i < psd_clock_nworkers(c); i++) {
    psd_clock_worker(c, i, 40, &in);
    ck_assert_str_eq(psd_worker_state_name(in.state), in.id == r1 ? "DONE" : "ALIVE");
  }
  ck_assert_int_eq(a.released, 1);
  ck_assert_int_eq(a.status, 0);
  ck_assert_int_eq(psd_clock_expired(c, r1), 1);
  ck_assert_int_eq(psd_clock_expired(c, 7), 0); /* unknown */
  ck_assert_int_eq(psd_clock_model_clock(c, "m", r1), -1);
  psd_clock_stats st;
  ck_assert_int_eq(psd_clock_stats_of(c, "m", &st), 0);
  ck_assert_uint_eq(st.max_gap, 0);
  psd_clock_free(c);
}
END_TEST

/* tparts returns RANK's partitions of 8 as "0,3,6". */
static const char *tparts(const psd_clock *c, uint32_t rank, char *buf) {
  uint32_t out[8];
  size_t n = psd_clock_partitions(c, rank, 8, out), off = 0;
  buf[0] = 0;
  for (size_t i = 0; i < n; i++) off += (size_t)sprintf(buf + off, "%s%u", i ? "," : "", out[i]);
  return buf;
}

/* tclaim claims for WORKER (epochs 2, a training set of 80 samples) and
 * returns the partition, -1 for none (*DONE set). */
static int tclaim(psd_clock *c, uint32_t worker, uint64_t now, psd_part_pos *pos, int *done) {
  ps_errbuf eb;
  int got = psd_clock_claim(c, worker, "m", 2, 80, now, pos, done, &eb);
  ck_assert_int_ge(got, 0);
  return got ? (int)pos->part : -1;
}

/* tprog reports WORKER at OFFSET (STARTED) of POS (size 10). */
static int tprog(psd_clock *c, uint32_t worker, psd_part_pos pos, uint64_t offset,
                 uint64_t started, uint64_t now) {
  ps_errbuf eb;
  pos.offset = offset;
  pos.started = started;
  pos.size = 10;
  return psd_clock_progress(c, worker, &pos, now, &eb);
}

/* Partitions (invariant 7): balanced over the registered workers; a
 * claim makes one active and only its owner's progress counts; a death
 * hands the active one over at its last offset, counting what was in
 * flight as retrained; a finished partition moves to the next epoch; a
 * worker with nothing of its own takes one from the most loaded. */
START_TEST(test_partitions_progress_and_failover) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  char b[64];
  int done;
  psd_part_pos pos, p1;
  ck_assert_str_eq(tparts(c, 0, b), ""); /* nobody registered yet */
  treg2(c);
  ck_assert_str_eq(tparts(c, 0, b), "0,1,2,3");
  ck_assert_str_eq(tparts(c, 1, b), "4,5,6,7");
  ck_assert_int_eq(tclaim(c, 0, 10, &pos, &done), 0);
  ck_assert_int_eq(tclaim(c, 1, 10, &p1, &done), 4);
  /* a third worker joins: it gets inactive partitions of the most loaded */
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 12, "cpu", 10, &r, &sc, &eb), 0);
  ck_assert_str_eq(tparts(c, 2, b), "3,7");
  ck_assert_str_eq(tparts(c, 0, b), "0,1,2");
  /* progress: only the owner of an active partition, offsets forward */
  ck_assert_int_eq(tprog(c, 0, pos, 0, 4, 20), 0);
  ck_assert_int_eq(tprog(c, 0, pos, 4, 8, 30), 0);
  ck_assert_int_eq(tprog(c, 1, pos, 8, 8, 30), PS_ENOENT);
  ck_assert_int_eq(tprog(c, 0, pos, 2, 8, 30), PS_EINVAL);
  ck_assert_int_eq(tprog(c, 1, p1, 0, 4, 30), 0);
  /* worker 0 falls silent: partition 0 resumes at 4 with the least loaded
   * (4 in flight, retrained), its others are spread too */
  psd_clock_heartbeat(c, 1, "m", 0, 0, 0, NULL, NULL, 900, &eb);
  psd_clock_heartbeat(c, 2, "m", 0, 0, 0, NULL, NULL, 900, &eb);
  psd_clock_tick(c, 1100);
  ck_assert_int_eq(psd_clock_expired(c, 0), 1);
  ck_assert_str_eq(tparts(c, 0, b), "");
  psd_part_info in;
  psd_clock_part_info(c, 0, &in);
  ck_assert_uint_eq(in.pos.offset, 4);
  ck_assert_uint_eq(in.pos.started, 4);
  ck_assert_int_eq(in.active, 0);
  ck_assert_uint_ne(in.owner, PSD_CLOCK_NOBODY);
  psd_epoch_info ei;
  psd_clock_epoch_info(c, 0, &ei);
  ck_assert_uint_eq(ei.trained, 4);
  ck_assert_uint_eq(ei.retrained, 4);
  ck_assert_uint_eq(ei.handovers, 1);
  ck_assert_int_eq(tprog(c, 0, pos, 8, 8, 1200), PS_EEXPIRED);
  /* worker 2 claims: the lowest (epoch, id) of its own, partition 0 at 4 */
  uint32_t own = in.owner;
  psd_part_pos g;
  ck_assert_int_eq(tclaim(c, own, 1200, &g, &done), 0);
  ck_assert_uint_eq(g.offset, 4);
  /* it trains again from its offset (6) what it had started (to 8): a
   * push of unknown fate, said in its next report; counted retrained (it
   * was not), at most what it had started past its offset */
  ck_assert_int_eq(tprog(c, own, g, 6, 8, 1201), 0);
  {
    psd_part_pos again = g;
    again.offset = 6, again.started = 7, again.size = 10, again.retrained = 2;
    ck_assert_int_eq(psd_clock_progress(c, own, &again, 1202, &eb), 0);
    again.started = 8, again.retrained = 50; /* more than it had started: 7 - 6 at most */
    ck_assert_int_eq(psd_clock_progress(c, own, &again, 1203, &eb), 0);
  }
  psd_clock_epoch_info(c, 0, &ei);
  ck_assert_uint_eq(ei.retrained, 7);
  ck_assert_int_eq(tprog(c, own, g, 10, 10, 1210), 0); /* finished: epoch 1 */
  psd_clock_part_info(c, 0, &in);
  ck_assert_uint_eq(in.pos.epoch, 1);
  ck_assert_uint_eq(in.pos.offset, 0);
  ck_assert_int_eq(in.active, 0);
  psd_clock_epoch_info(c, 0, &ei);
  ck_assert_uint_eq(ei.trained, 10);
  ck_assert_uint_eq(ei.done_parts, 1);
  /* a leaving worker hands its active partition over exactly */
  ck_assert_int_eq(tprog(c, 1, p1, 6, 6, 1220), 0);
  psd_clock_leave(c, 1, 1230, 0);
  psd_clock_part_info(c, 4, &in);
  ck_assert_uint_eq(in.pos.offset, 6);
  ck_assert_uint_eq(in.owner, own);
  psd_clock_epoch_info(c, 0, &ei);
  ck_assert_uint_eq(ei.retrained, 7);
  /* the survivor trains everything: 8 partitions x 2 epochs x 10 */
  int n = 0;
  while (tclaim(c, own, 1300, &g, &done) >= 0) {
    ck_assert_int_eq(tprog(c, own, g, 10, 10, 1300), 0);
    ck_assert_int_lt(++n, 100);
  }
  ck_assert_int_eq(done, 1);
  for (int e = 0; e < 2; e++) {
    psd_clock_epoch_info(c, (size_t)e, &ei);
    ck_assert_uint_eq(ei.trained, 80);
    ck_assert_uint_eq(ei.done_parts, 8);
  }
  /* the job is finished, and keeps its training set: more epochs on
   * another one are refused, and the refusal changes nothing */
  ck_assert_int_eq(psd_clock_claim(c, own, "m", 3, 96, 1400, &g, &done, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "has 96 samples, the job's 80") && strstr(eb.msg, "'m'"), "%s",
                eb.msg);
  ck_assert_uint_eq(psd_clock_data_size(c), 80);
  ck_assert_uint_eq(psd_clock_job_epochs(c), 2);
  ck_assert_int_eq(psd_clock_claim(c, own, "m", 2, 80, 1400, &g, &done, &eb), 0);
  ck_assert_int_eq(done, 1);
  /* another model: a new job (nothing is being trained) with its own
   * training set; while it trains, a claim for the first one is refused
   * as such, whatever its data */
  ck_assert_int_eq(psd_clock_claim(c, own, "m2", 1, 96, 1400, &g, &done, &eb), 1);
  ck_assert_str_eq(psd_clock_job_model(c), "m2");
  ck_assert_uint_eq(psd_clock_data_size(c), 96);
  ck_assert_uint_eq(g.epoch, 0);
  ck_assert_uint_eq(psd_clock_nepochs(c), 0);
  ck_assert_int_eq(psd_clock_claim(c, own, "m", 1, 80, 1400, &g, &done, &eb), PS_EEXIST);
  ck_assert_ptr_nonnull(strstr(eb.msg, "model 'm2'"));
  psd_clock_free(c);
}
END_TEST

/* An empty partition (fewer samples than partitions) is finished by its
 * report of size 0: it was refused as a bad offset, and every worker of
 * such a job exited 1.  A partition whose size is known cannot be
 * reported empty. */
START_TEST(test_partition_empty) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  int done;
  psd_part_pos pos;
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 10, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_int_eq(tclaim(c, r, 10, &pos, &done), 0);
  pos.offset = pos.started = pos.size = 0;
  ck_assert_msg(psd_clock_progress(c, r, &pos, 20, &eb) == 0, "%s", eb.msg);
  psd_part_info in;
  psd_clock_part_info(c, 0, &in);
  ck_assert_uint_eq(in.pos.epoch, 1);
  ck_assert_int_eq(in.active, 0);
  ck_assert_int_eq(tclaim(c, r, 30, &pos, &done), 1);
  ck_assert_int_eq(tprog(c, r, pos, 4, 8, 40), 0); /* size 10 now known */
  pos.offset = pos.started = pos.size = 0;
  ck_assert_int_eq(psd_clock_progress(c, r, &pos, 50, &eb), PS_EINVAL);
  psd_clock_free(c);
}
END_TEST

/* More epochs for a finished job: its partitions are spread again over
 * the live workers, so a worker that registered after the end does not
 * train one partition epoch after epoch while the first owns the rest. */
START_TEST(test_partitions_more_epochs) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  char b[64];
  int done;
  psd_part_pos pos;
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 10, "cpu", 0, &r, &sc, &eb), 0);
  for (int n = 0; tclaim(c, 0, 10, &pos, &done) >= 0; n++) {
    ck_assert_int_eq(tprog(c, 0, pos, 10, 10, 10), 0);
    ck_assert_int_lt(n, 100);
  }
  ck_assert_int_eq(done, 1);
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 11, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_str_eq(tparts(c, 1, b), ""); /* nothing unfinished to share */
  ck_assert_int_eq(psd_clock_claim(c, 0, "m", 3, 80, 20, &pos, &done, &eb), 1);
  ck_assert_str_eq(tparts(c, 1, b), "4,5,6,7");
  int seen[8] = {0};
  for (int k = 0; k < 4; k++) {
    ck_assert_int_eq(psd_clock_claim(c, 1, "m", 3, 80, 20, &pos, &done, &eb), 1);
    ck_assert_uint_eq(pos.epoch, 2);
    ck_assert_int_eq(seen[pos.part]++, 0);
    ck_assert_int_eq(tprog(c, 1, pos, 10, 10, 20), 0);
  }
  psd_clock_free(c);
}
END_TEST

/* Persistence (invariant 10): a saved table loads into a fresh one with
 * the same partitions, counts, workers and clocks; a damaged text is
 * refused naming its line. */
START_TEST(test_save_load) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  int done;
  psd_part_pos pos;
  treg2(c);
  ck_assert_int_eq(tclaim(c, 1, 10, &pos, &done), 4);
  ck_assert_int_eq(tprog(c, 1, pos, 3, 6, 20), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 6, 20, &eb), 0);
  /* the job has begun: another training set is refused */
  ck_assert_int_eq(psd_clock_claim(c, 0, "m", 2, 96, 20, &pos, &done, &eb), PS_ECONFIG);
  ck_assert_msg(strstr(eb.msg, "96 samples, the job's 80"), "%s", eb.msg);
  /* what restarts the job: an identical submit (psctl says 'already has')
   * does not, and a user who followed the old advice was refused again */
  ck_assert_msg(strstr(eb.msg, "--replace and a setting changed starts it over; an identical "
                               "submit changes nothing"), "%s", eb.msg);
  ck_assert_uint_eq(psd_clock_data_size(c), 80);
  ck_assert_int_eq(psd_clock_dirty(c), 1);
  char *text;
  size_t len;
  ck_assert_int_eq(psd_clock_save(c, &text, &len, &eb), 0);
  ck_assert_int_eq(psd_clock_dirty(c), 0);
  psd_clock *d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 5000, &eb), 0);
  psd_part_info in;
  psd_clock_part_info(d, 4, &in);
  ck_assert_uint_eq(in.owner, 1);
  ck_assert_int_eq(in.active, 1);
  ck_assert_uint_eq(in.pos.offset, 3);
  ck_assert_uint_eq(in.pos.started, 6);
  ck_assert_uint_eq(psd_clock_data_size(d), 80);
  ck_assert_str_eq(psd_clock_job_model(d), "m");
  ck_assert_int_eq(psd_clock_model_clock(d, "m", 1), 7);
  /* a restored clock is set by the worker's next pull, down too (pushes
   * lost with the restart); worker 0, restored at 0, holds bsp at 0 */
  tpark a;
  tpark_init(&a);
  ck_assert_int_eq(psd_clock_pull(d, "m", 1, 0, 5000, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(d, "m", 1), 0);
  ck_assert_int_eq(tprog(d, 1, pos, 6, 8, 5100), 0); /* it goes on where it was */
  psd_clock_tick(d, 6100);                             /* nobody came back: handed on */
  psd_clock_part_info(d, 4, &in);
  ck_assert_uint_eq(in.owner, PSD_CLOCK_NOBODY);
  psd_clock_free(d);
  char *bad = strdup(text);
  char *at = strstr(bad, "part 4");
  ck_assert_ptr_nonnull(at);
  at[5] = 'x';
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, bad, 0, &eb), PS_EFORMAT);
  ck_assert_ptr_nonnull(strstr(eb.msg, "line "));
  psd_clock_free(d);
  /* another partition count (data.partitions changed): PS_ECONFIG, the
   * table untouched, so the same table still loads a matching save */
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, "psd-clock 1\njob 1 data 100 parts 999\nend\n", 0, &eb),
                   PS_ECONFIG);
  ck_assert_ptr_nonnull(strstr(eb.msg, "999 partitions saved"));
  ck_assert_int_eq(psd_clock_load(d, text, 0, &eb), 0);
  psd_clock_free(d);
  text[len - 4] = 0; /* no "end" */
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 0, &eb), PS_EFORMAT);
  psd_clock_free(d);
  free(bad);
  free(text);
  psd_clock_free(c);
}
END_TEST

/* Worker identity (invariant 8): 30,000 made-up ids leave the table at
 * the world's size, and each request of one is refused naming the world. */
START_TEST(test_world_bounds_table) {
  psd_clock *c = tclock(PSD_CLOCK_ASP);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  for (uint32_t id = 0; id < 30000; id++) {
    int want = id < 8 ? 0 : PS_EINVAL;
    ck_assert_int_eq(psd_clock_pull(c, "m", id, 0, 10, &a.p, &eb), want);
    ck_assert_int_eq(psd_clock_pushed(c, "m", id, 0, 10, &eb), want);
    ck_assert_int_eq(psd_clock_touch(c, id, 10, &eb), want);
    ck_assert_int_eq(psd_clock_heartbeat(c, id, "m", 1, 0, 0, "h", "cpu", 10, &eb), want);
  }
  ck_assert_str_eq(eb.msg, "worker 29999 is outside this cluster's worker ids (0..7, that is 2 "
                           "x workers.count + 1 with workers.count 3)");
  ck_assert_uint_eq(psd_clock_nworkers(c), 8);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 8), -1);
  psd_clock_free(c);
}
END_TEST

/* Expiry is final (invariant 9): a worker declared dead by its lease is
 * refused with PS_EEXPIRED on pushes, pulls, touches and plain heartbeats,
 * none of which brings it back or enters a clock; a rejoin or a
 * registration does.  A worker that left done is taken by any request; one
 * that left unfinished is refused like an expired one; a bare client that
 * never held a lease (no registration, no heartbeat) is taken back too. */
START_TEST(test_expired_refused_until_rejoin) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  uint32_t r;
  uint64_t sc;
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(psd_clock_register(c, "m", "h", 10 + i, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 900, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 2, 0, 900, &eb), 0);
  psd_clock_tick(c, 1500); /* rank 1 silent since 0: dead */
  ck_assert_int_eq(psd_clock_expired(c, 1), 1);
  ck_assert_int_eq(psd_clock_check_live(c, 0, &eb), 0);
  ck_assert_int_eq(psd_clock_check_live(c, 1, &eb), PS_EEXPIRED);
  ck_assert_ptr_nonnull(strstr(eb.msg, "worker 1 was declared dead"));
  ck_assert_int_eq(psd_clock_check_live(c, 8, &eb), PS_EINVAL); /* the world first */
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 1, 1600, &a.p, &eb), PS_EEXPIRED);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 0, 1600, &eb), PS_EEXPIRED);
  ck_assert_int_eq(psd_clock_touch(c, 1, 1600, &eb), PS_EEXPIRED);
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "m", 1, 0, 0, "h", "cpu", 1600, &eb), PS_EEXPIRED);
  ck_assert_int_eq(psd_clock_expired(c, 1), 1);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), -1); /* nothing entered */
  /* bsp went on without it: rank 0's pull at clock 1 is served */
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 1, 1600, &a.p, &eb), 0);
  /* rejoin: alive, and its next pull enters it at its clock */
  ck_assert_int_eq(psd_clock_rejoin(c, 1, "h", 0, 1700, &eb), 0);
  ck_assert_int_eq(psd_clock_expired(c, 1), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 1, 1700, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_model_clock(c, "m", 1), 1);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 1, 1700, &eb), 0);
  /* registration brings an expired rank back too */
  psd_clock_pushed(c, "m", 0, 1, 2600, &eb);
  psd_clock_pushed(c, "m", 1, 2, 2600, &eb);
  psd_clock_tick(c, 3000); /* rank 2 silent since 900 */
  ck_assert_int_eq(psd_clock_check_live(c, 2, &eb), PS_EEXPIRED);
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 40, "cpu", 3000, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 2);
  ck_assert_int_eq(psd_clock_check_live(c, 2, &eb), 0);
  /* left done: the next run's first request takes the rank */
  psd_clock_leave(c, 0, 3100, 1);
  ck_assert_int_eq(psd_clock_check_live(c, 0, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 0, 3100, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_expired(c, 0), 0);
  /* left unfinished: refused like an expired one */
  psd_clock_leave(c, 0, 3200, 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 3200, &eb), PS_EEXPIRED);
  psd_clock_free(c);
  /* a bare client: expires, and its next push takes the rank back */
  c = tclock(PSD_CLOCK_ASP);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 0, &eb), 0);
  psd_clock_tick(c, 1500);
  ck_assert_int_eq(psd_clock_expired(c, 0), 1);
  ck_assert_int_eq(psd_clock_check_live(c, 0, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 1, 1600, &eb), 0);
  ck_assert_int_eq(psd_clock_expired(c, 0), 0);
  psd_clock_free(c);
  /* every lease expired at once (the coordinator's host cut off): each
   * process registering again gets its own rank back, whatever the order
   * (the first got rank 0 and the others exited: "rank went to another
   * worker") */
  c = tclock(0);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(psd_clock_register(c, "m", "h", 10 + i, "cpu", 0, &r, &sc, &eb), 0);
  psd_clock_tick(c, 5000);
  for (uint32_t k = 0; k < 3; k++) ck_assert_int_eq(psd_clock_expired(c, k), 1);
  for (int i = 2; i >= 0; i--) {
    ck_assert_int_eq(psd_clock_register(c, "m", "h", 10 + i, "cpu", 5100, &r, &sc, &eb), 0);
    ck_assert_uint_eq(r, (uint32_t)i);
  }
  /* a new process meanwhile takes a free rank, not a dead worker's own */
  psd_clock_tick(c, 9000);
  ck_assert_int_eq(psd_clock_register(c, "m", "h2", 10, "cpu", 9000, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 0); /* host h2: another process, given the lowest died rank */
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 10, "cpu", 9100, &r, &sc, &eb), 0);
  ck_assert_uint_ne(r, 0); /* its rank went to h2's: a new one */
  psd_clock_free(c);
}
END_TEST

/* A coordinator restart (invariant 10) keeps each worker's host with its
 * pid: a worker declared dead after the restart (its heartbeat channel
 * was still reconnecting) that registers again gets its own rank back,
 * whatever the order (before, the host was lost with the restart and the
 * first process to register took rank 0, the others exiting with "rank
 * went to another worker"); a save without hosts (an older coordinator)
 * still loads. */
START_TEST(test_restart_keeps_ranks) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(psd_clock_register(c, "m", "h", 10 + i, "cpu", 0, &r, &sc, &eb), 0);
  char *text;
  size_t len;
  ck_assert_int_eq(psd_clock_save(c, &text, &len, &eb), 0);
  psd_clock *d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 5000, &eb), 0);
  psd_clock_tick(d, 6100); /* nobody reached it within the lease */
  for (uint32_t k = 0; k < 3; k++) ck_assert_int_eq(psd_clock_expired(d, k), 1);
  for (int i = 2; i >= 0; i--) {
    ck_assert_int_eq(psd_clock_register(d, "m", "h", 10 + i, "cpu", 6200, &r, &sc, &eb), 0);
    ck_assert_uint_eq(r, (uint32_t)i);
  }
  psd_clock_free(d);
  /* the lease of a restored worker runs from psd_clock_grace (the
   * coordinator serving again), not from the load */
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 5000, &eb), 0);
  psd_clock_grace(d, 5800);
  psd_clock_tick(d, 6100);
  ck_assert_int_eq(psd_clock_expired(d, 0), 0);
  psd_clock_tick(d, 6800);
  ck_assert_int_eq(psd_clock_expired(d, 0), 1);
  psd_clock_free(d);
  /* an older save: "worker" lines end at the clock */
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, "psd-clock 1\njob 0 data 0 parts 8\n"
                                  "worker 0 1 1 0 0 10 0\nend\n", 5000, &eb), 0);
  ck_assert_int_eq(psd_clock_expired(d, 0), 0);
  psd_clock_free(d);
  free(text);
  psd_clock_free(c);
}
END_TEST

/* tlost_restart returns a coordinator restarted at 5000 from the save
 * (*TEXT) of *C, which holds rank 0 only (pid 10 on h): as one killed
 * within the save of rank 1's registration comes back. */
static psd_clock *tlost_restart(psd_clock **c, char **text) {
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  size_t len;
  *c = tclock(0);
  ck_assert_int_eq(psd_clock_register(*c, "m", "h", 10, "cpu", 0, &r, &sc, &eb), 0);
  ck_assert_int_eq(psd_clock_save(*c, text, &len, &eb), 0);
  psd_clock *d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, *text, 5000, &eb), 0);
  return d;
}

/* Invariant 13: a coordinator restarted from a save made before a
 * registration (killed within that save) hears the worker's heartbeats
 * in a rank it holds no registration of.  It says so
 * (psd_clock_unregistered), refuses its claim as expired (it was
 * PS_EINVAL, and the worker exited), keeps the rank from newcomers while
 * the beats come, and gives it back to that process (host and pid) when
 * it registers again. */
START_TEST(test_restart_lost_registration) {
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  int done;
  psd_part_pos pos;
  char *text;
  psd_clock *c, *d = tlost_restart(&c, &text);
  ck_assert_int_eq(psd_clock_heartbeat(d, 1, "m", 4, 0, 0, "h", "cpu", 5100, &eb), 0);
  psd_clock_set_pid(d, 1, 11);
  ck_assert_int_eq(psd_clock_unregistered(d, 1), 1);
  ck_assert_int_eq(psd_clock_unregistered(d, 0), 0);
  ck_assert_int_eq(psd_clock_unregistered(d, 2), 0);
  ck_assert_int_eq(psd_clock_claim(d, 1, "m", 2, 80, 5100, &pos, &done, &eb), PS_EEXPIRED);
  ck_assert_msg(strstr(eb.msg, "must register again"), "%s", eb.msg);
  /* a newcomer does not get the rank whose beats come */
  ck_assert_int_eq(psd_clock_register(d, "m", "h", 12, "cpu", 5200, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 2);
  ck_assert_int_eq(psd_clock_register(d, "m", "h", 11, "cpu", 5300, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 1);
  ck_assert_int_eq(psd_clock_unregistered(d, 1), 0);
  ck_assert_int_ge(psd_clock_claim(d, 1, "m", 2, 80, 5300, &pos, &done, &eb), 0);
  /* another process's beats in that rank are refused now (invariant 12) */
  ck_assert_int_eq(psd_clock_holder(d, 1, "h", 13, NULL, &eb), PS_EEXPIRED);
  psd_clock_free(d);
  free(text);
  psd_clock_free(c);
}
END_TEST

/* Invariant 13, the rank taken: a coordinator restarted without rank
 * 1's registration gives rank 1 to a newcomer before the lost process's
 * heartbeats come.  That process's beats are refused as expired, and
 * the refusal says the rank was taken while the coordinator held no
 * registration of it, not that it was declared dead (it never was: the
 * worker said "lease expired").  A retried registration of the
 * newcomer keeps that; a rank taken after its holder died does not. */
START_TEST(test_restart_lost_registration_taken) {
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  char *text;
  psd_clock *c, *d = tlost_restart(&c, &text);
  ck_assert_int_eq(psd_clock_register(d, "m", "h", 12, "cpu", 5100, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 1);
  ck_assert_int_eq(psd_clock_register(d, "m", "h", 12, "cpu", 5150, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 1); /* retried */
  int unseen = -1;
  ck_assert_int_eq(psd_clock_holder(d, 1, "h", 11, &unseen, &eb), PS_EEXPIRED);
  ck_assert_int_eq(unseen, 1);
  ck_assert_msg(strstr(eb.msg, "held by pid 12 on h") &&
                    strstr(eb.msg, "held no registration of this process (pid 11 on h; a "
                                   "restart lost it, or it never registered: a fixed rank), "
                                   "which was not declared dead"),
                "%s", eb.msg);
  ck_assert_int_eq(psd_clock_holder(d, 1, "h", 12, &unseen, &eb), 0);
  ck_assert_int_eq(unseen, 0);
  /* rank 0 restored from the save: taken after its holder died */
  ck_assert_int_eq(psd_clock_heartbeat(d, 1, "m", 0, 0, 0, "h", "cpu", 6500, &eb), 0);
  psd_clock_tick(d, 7000);
  ck_assert_int_eq(psd_clock_register(d, "m", "h", 13, "cpu", 7000, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 0);
  ck_assert_int_eq(psd_clock_holder(d, 0, "h", 10, &unseen, &eb), PS_EEXPIRED);
  ck_assert_int_eq(unseen, 0);
  psd_clock_free(d);
  free(text);
  psd_clock_free(c);
}
END_TEST

/* After a coordinator restart the restored started of an active
 * partition is up to PSD_COORD_SAVE_MS old: the samples its worker says
 * it trains again (a push lost with the restart) count as retrained, not
 * 0 because the stale started lies behind the worker's offset. */
START_TEST(test_restart_counts_retrained) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  int done;
  psd_part_pos pos;
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 10, "cpu", 0, &r, &sc, &eb), 0);
  int part = tclaim(c, 0, 10, &pos, &done);
  ck_assert_int_ge(part, 0);
  ck_assert_int_eq(tprog(c, 0, pos, 2, 4, 20), 0);
  char *text;
  size_t len;
  ck_assert_int_eq(psd_clock_save(c, &text, &len, &eb), 0);
  psd_clock *d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 5000, &eb), 0);
  /* the worker got to 6 (unsaved) and its push of [6, 8) was lost with
   * the restart: it goes back over those 2 samples */
  pos.retrained = 2;
  ck_assert_int_eq(tprog(d, 0, pos, 6, 8, 5100), 0);
  psd_epoch_info ei;
  psd_clock_epoch_info(d, 0, &ei);
  ck_assert_uint_eq(ei.trained, 6);
  ck_assert_uint_eq(ei.retrained, 2);
  /* once reported, started bounds the count again */
  pos.retrained = 5;
  ck_assert_int_eq(tprog(d, 0, pos, 6, 8, 5200), 0);
  psd_clock_epoch_info(d, 0, &ei);
  ck_assert_uint_eq(ei.retrained, 4);
  psd_clock_free(d);
  free(text);
  /* a claim after the last save: the restored partition is its owner's
   * but not active; the owner's report past the saved offset goes on
   * with it (it was refused, and the worker trained those samples again
   * from the saved offset, counted nowhere) */
  ck_assert_int_eq(tprog(c, 0, pos, 10, 10, 30), 0); /* finished */
  ck_assert_int_eq(psd_clock_save(c, &text, &len, &eb), 0);
  int next = tclaim(c, 0, 40, &pos, &done);
  ck_assert_int_ge(next, 0);
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 5000, &eb), 0);
  pos.retrained = 0;
  ck_assert_int_eq(tprog(d, 0, pos, 4, 6, 5100), 0);
  psd_part_info in;
  psd_clock_part_info(d, (uint32_t)next, &in);
  ck_assert_int_eq(in.active, 1);
  ck_assert_uint_eq(in.pos.offset, 4);
  /* another worker's report of it is still refused */
  ck_assert_int_eq(psd_clock_register(d, "m", "h", 11, "cpu", 5100, &r, &sc, &eb), 0);
  ck_assert_int_eq(tprog(d, r, pos, 5, 6, 5100), PS_ENOENT);
  psd_clock_free(d);
  free(text);
  psd_clock_free(c);
}
END_TEST

/* Finding (psw_failover/failover_ranks): the coordinator's last save came
 * before the job's first claim (the workers had registered; a save runs
 * every PSD_COORD_SAVE_MS in the background, and the kill came before
 * the next one finished), so the restored table named no job.  The
 * first claim after the restart, another worker's, took the table for a
 * new job and reset it, and with it the restored marks: the owner's
 * report of the partition it had claimed after the save was refused as
 * "not claimed", its retrain counted nowhere, the partition went to
 * another.  A table without a job holds nothing to reset: the claim
 * adopts the model and the restored partitions stay their owners'. */
START_TEST(test_restart_before_first_claim) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  int done;
  psd_part_pos pos, other;
  for (uint32_t i = 0; i < 3; i++)
    ck_assert_int_eq(psd_clock_register(c, "m", "h", 10 + i, "cpu", 0, &r, &sc, &eb), 0);
  char *text;
  size_t len;
  ck_assert_int_eq(psd_clock_save(c, &text, &len, &eb), 0);
  int part = tclaim(c, 0, 10, &pos, &done); /* after the save */
  ck_assert_int_ge(part, 0);
  psd_clock *d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 5000, &eb), 0);
  ck_assert_ptr_null(psd_clock_job_model(d));
  ck_assert_int_ge(tclaim(d, 1, 5050, &other, &done), 0);
  ck_assert_int_ne((int)other.part, part);
  ck_assert_str_eq(psd_clock_job_model(d), "m");
  /* worker 0 got to 6, its push of [6, 8) lost with the restart: it
   * trains them again */
  pos.retrained = 2;
  ck_assert_int_eq(tprog(d, 0, pos, 6, 8, 5100), 0);
  psd_part_info in;
  psd_clock_part_info(d, (uint32_t)part, &in);
  ck_assert_int_eq(in.active, 1);
  ck_assert_uint_eq(in.owner, 0);
  ck_assert_uint_eq(in.pos.offset, 6);
  psd_epoch_info ei;
  psd_clock_epoch_info(d, 0, &ei);
  ck_assert_uint_eq(ei.trained, 6);
  ck_assert_uint_eq(ei.retrained, 2);
  ck_assert_uint_eq(psd_clock_job_epochs(d), 2);
  ck_assert_uint_eq(psd_clock_data_size(d), 80);
  psd_clock_free(d);
  /* the owner's report first, taken by the restored marks, then another
   * worker's first claim: the job goes on, the owner's next report too */
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 5000, &eb), 0);
  pos.retrained = 2;
  ck_assert_int_eq(tprog(d, 0, pos, 6, 8, 5100), 0);
  ck_assert_int_ge(tclaim(d, 1, 5150, &other, &done), 0);
  ck_assert_int_ne((int)other.part, part);
  pos.retrained = 0;
  ck_assert_int_eq(tprog(d, 0, pos, 8, 10, 5200), 0);
  psd_clock_epoch_info(d, 0, &ei);
  ck_assert_uint_eq(ei.trained, 8);
  ck_assert_uint_eq(ei.retrained, 2);
  psd_clock_free(d);
  /* the owner finished the saved epoch after the save and trains the
   * next: that epoch's rest counts trained and finished, the report is
   * taken at its own epoch; a later epoch's report of another's
   * partition stays refused */
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, text, 5000, &eb), 0);
  pos.epoch = 1;
  pos.retrained = 2;
  ck_assert_int_eq(tprog(d, 1, pos, 0, 2, 5100), PS_ENOENT);
  ck_assert_int_eq(tprog(d, 0, pos, 0, 2, 5100), 0);
  psd_clock_part_info(d, (uint32_t)part, &in);
  ck_assert_int_eq(in.active, 1);
  ck_assert_uint_eq(in.pos.epoch, 1);
  psd_clock_epoch_info(d, 0, &ei);
  ck_assert_uint_eq(ei.trained, 10);
  ck_assert_uint_eq(ei.done_parts, 1);
  psd_clock_epoch_info(d, 1, &ei);
  ck_assert_uint_eq(ei.trained, 0);
  ck_assert_uint_eq(ei.retrained, 2);
  psd_clock_free(d);
  free(text);
  psd_clock_free(c);
}
END_TEST

/* Finding: a worker stopped past its lease whose rank went to a new
 * process meanwhile is not the rank's holder: psd_clock_holder tells the
 * coordinator to refuse what it sends (its leave would declare the new
 * worker dead, its progress would move another's partition).  Fixed
 * ranks (never registered) and requests without a pid are not told
 * apart. */
START_TEST(test_holder) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  treg2(c);
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 1000, &eb), 0);
  psd_clock_tick(c, 1500); /* rank 1 stopped: dead */
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 20, "cpu", 1500, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 1);
  ck_assert_int_eq(psd_clock_holder(c, 1, "h", 20, NULL, &eb), 0);
  /* the stopped one, resumed: declared dead before pid 20 took its rank */
  int unseen = -1;
  ck_assert_int_eq(psd_clock_holder(c, 1, "h", 11, &unseen, &eb), PS_EEXPIRED);
  ck_assert_msg(strstr(eb.msg, "held by pid 20 on h") && strstr(eb.msg, "declared dead"),
                "%s", eb.msg);
  ck_assert_int_eq(unseen, 0);
  ck_assert_int_eq(psd_clock_holder(c, 1, "h2", 20, NULL, &eb), PS_EEXPIRED); /* another host */
  ck_assert_int_eq(psd_clock_holder(c, 1, "h", 0, NULL, &eb), 0);             /* says no pid */
  ck_assert_int_eq(psd_clock_holder(c, 0, "h", 10, NULL, &eb), 0);
  ck_assert_int_eq(psd_clock_holder(c, 5, "h", 99, NULL, &eb), 0);            /* unknown */
  /* a heartbeat of another process does not take the holder's pid */
  psd_clock_set_pid(c, 1, 11);
  ck_assert_int_eq(psd_clock_holder(c, 1, "h", 20, NULL, &eb), 0);
  /* a bare client's rank: anyone */
  ck_assert_int_eq(psd_clock_pushed(c, "m", 4, 0, 1500, &eb), 0);
  ck_assert_int_eq(psd_clock_holder(c, 4, "x", 1, NULL, &eb), 0);
  /* a registration without a host does not inherit the last holder's */
  psd_clock_tick(c, 3000);
  ck_assert_int_eq(psd_clock_register(c, "m", "", 30, "cpu", 3000, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 0);
  ck_assert_int_eq(psd_clock_holder(c, 0, "h9", 30, NULL, &eb), 0);
  psd_clock_free(c);
}
END_TEST

/* Finding (the auditor's `psw --rank 0` after a registered rank 0
 * finished): the fixed rank's rejoin revived the rank, but its record
 * still named the finished process as the registered holder, so the
 * coordinator refused every later beat of the new process (rejoins
 * included) as expired in the old one's name: psw logged a "declared
 * dead ... rejoining" / "a shard missed the rejoin" pair at each beat,
 * and the message said the coordinator had restarted.  A dead rank that
 * another process takes back by a rejoin is that process's; a rejoin by
 * the registered process itself keeps its registration. */
START_TEST(test_rejoin_takes_dead_registered_rank) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  treg2(c);
  psd_clock_leave(c, 0, 100, 1); /* rank 0 finished */
  ck_assert_int_eq(psd_clock_rejoin(c, 0, "h", 30, 200, &eb), 0); /* psw --rank 0 */
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 200, &eb), 0);
  psd_clock_set_pid(c, 0, 30);
  int unseen = -1;
  ck_assert_msg(psd_clock_holder(c, 0, "h", 30, &unseen, &eb) == 0, "%s", eb.msg);
  ck_assert_int_eq(psd_clock_expired(c, 0), 0);
  /* a fixed rank's now (unregistered): not told apart (invariant 12) */
  ck_assert_int_eq(psd_clock_holder(c, 0, "h", 10, NULL, &eb), 0);
  ck_assert_int_eq(psd_clock_unregistered(c, 0), 1);
  /* rank 1 declared dead, rejoined by its own registered process: kept */
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 1500, &eb), 0);
  psd_clock_tick(c, 1500);
  ck_assert_int_eq(psd_clock_expired(c, 1), 1);
  ck_assert_int_eq(psd_clock_rejoin(c, 1, "h", 11, 1600, &eb), 0);
  ck_assert_int_eq(psd_clock_holder(c, 1, "h", 11, NULL, &eb), 0);
  ck_assert_int_eq(psd_clock_holder(c, 1, "h", 12, NULL, &eb), PS_EEXPIRED);
  ck_assert_int_eq(psd_clock_unregistered(c, 1), 0);
  psd_clock_free(c);
}
END_TEST

/* A registered worker declared dead whose rank a fixed rank took back
 * (psd_clock_rejoin) comes back: its beats are refused as another's, so
 * it registers again and is not given the rank (it stops, psw_coord).
 * They were taken (the rank registered by nobody: not told apart), made
 * its pid the record's, and its registration then took the rank back as
 * if a restart had lost it: the fixed rank was refused and stopped. */
START_TEST(test_taken_rank_refuses_old_holder) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  treg2(c);
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "m", 0, 0, 0, "h", "cpu", 1500, &eb), 0);
  psd_clock_tick(c, 1500);
  ck_assert_int_eq(psd_clock_expired(c, 0), 1); /* pid 10 declared dead */
  ck_assert_int_eq(psd_clock_rejoin(c, 0, "h", 30, 1600, &eb), 0); /* psw --rank 0 */
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 1600, &eb), 0);
  psd_clock_set_pid(c, 0, 30);
  /* pid 10 resumes: refused in the fixed rank's name */
  ck_assert_int_eq(psd_clock_holder(c, 0, "h", 10, NULL, &eb), PS_EEXPIRED);
  ck_assert_msg(strstr(eb.msg, "held by pid 30 on h, which took it back"), "%s", eb.msg);
  ck_assert_int_eq(psd_clock_holder(c, 0, "h", 30, NULL, &eb), 0);
  /* its registration gets another rank, not 0 */
  ck_assert_int_eq(psd_clock_register(c, "m", "h", 10, "cpu", 1700, &r, &sc, &eb), 0);
  ck_assert_uint_ne(r, 0);
  ck_assert_int_eq(psd_clock_holder(c, 0, "h", 30, NULL, &eb), 0);
  /* the rank dead again is anyone's: pid 10 takes it back by a rejoin */
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "m", 0, 0, 0, "h", "cpu", 3000, &eb), 0);
  ck_assert_int_eq(psd_clock_heartbeat(c, r, "m", 0, 0, 0, "h", "cpu", 3000, &eb), 0);
  psd_clock_tick(c, 3000);
  ck_assert_int_eq(psd_clock_expired(c, 0), 1);
  ck_assert_int_eq(psd_clock_rejoin(c, 0, "h", 10, 3100, &eb), 0);
  ck_assert_int_eq(psd_clock_holder(c, 0, "h", 10, NULL, &eb), 0);
  psd_clock_free(c);
}
END_TEST

/* worker_host returns the host the table lists for worker ID ("" when
 * none), NULL when it does not list it. */
static const char *worker_host(const psd_clock *c, uint32_t id) {
  for (size_t i = 0; i < psd_clock_nworkers(c); i++) {
    psd_worker_info in;
    psd_clock_worker(c, i, 0, &in);
    if (in.id == id) return in.host ? in.host : "";
  }
  return NULL;
}

/* A coordinator restarted (kill -9) from a save made after a fixed rank
 * took the dead rank of a registered worker: the save keeps the fixed
 * mark with its model and the old holder's pid (invariants 10, 12, 14),
 * so the restored table refuses at once both the old holder's beats in
 * the fixed rank's name and the model's registrations, and its own save
 * loads into the same save.  Neither was saved: the old holder's beats
 * were taken (its pid became the record's, and its registration could
 * take the rank back), and a newcomer registered beside the fixed rank
 * until that one beat again.  A save of an older psd (version 1, none of
 * these fields) loads as it did. */
START_TEST(test_restart_keeps_fixed_and_taken) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  uint32_t r;
  uint64_t sc;
  char *text, *again;
  size_t len, alen;
  treg2(c);
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "m", 0, 0, 0, "h", "cpu", 1500, &eb), 0);
  psd_clock_tick(c, 1500);
  ck_assert_int_eq(psd_clock_expired(c, 0), 1); /* pid 10 declared dead */
  ck_assert_int_eq(psd_clock_rejoin(c, 0, "h", 100, 1600, &eb), 0); /* psw --rank 0 */
  fixed_beat(c, 0, "m", 1600);                                        /* pid 100 */
  ck_assert_int_eq(psd_clock_save(c, &text, &len, &eb), 0);
  psd_clock *d = tclock(0);
  ck_assert_msg(psd_clock_load(d, text, 5000, &eb) == 0, "%s", eb.msg);
  psd_clock_grace(d, 5000);
  ck_assert_int_eq(fixed_of(d, 0, 5000), 1);
  ck_assert_int_eq(fixed_of(d, 1, 5000), 0);
  ck_assert_int_eq(psd_clock_holder(d, 0, "h", 10, NULL, &eb), PS_EEXPIRED);
  ck_assert_msg(strstr(eb.msg, "held by pid 100 on h, which took it back"), "%s", eb.msg);
  ck_assert_int_eq(psd_clock_holder(d, 0, "h", 100, NULL, &eb), 0);
  ck_assert_int_eq(psd_clock_register(d, "m", "h", 12, "cpu", 5100, &r, &sc, &eb), PS_EEXIST);
  ck_assert_msg(strstr(eb.msg, "model 'm' is trained by 1 live fixed rank (psw --rank: rank 0)"),
                "%s", eb.msg);
  ck_assert_int_eq(psd_clock_save(d, &again, &alen, &eb), 0);
  ck_assert_str_eq(again, text);
  ck_assert_msg(!strncmp(text, "psd-clock 2\n", 12), "%s", text); /* the format's version */
  free(again);
  psd_clock_free(d);
  free(text);
  psd_clock_free(c);
  /* a fixed mark that changes is saved (the table is dirty) */
  c = tclock(0);
  fixed_beat(c, 2, "m", 10);
  ck_assert_int_eq(psd_clock_dirty(c), 1);
  psd_clock_free(c);
  /* version 1: no fixed rank, no old holder refused, the host as before */
  d = tclock(0);
  ck_assert_int_eq(psd_clock_load(d, "psd-clock 1\njob 0 data 0 parts 8\n"
                                  "worker 0 0 1 0 0 100 0 h\nworker 1 1 1 0 0 11 0 h\nend\n",
                                  5000, &eb), 0);
  ck_assert_int_eq(fixed_of(d, 0, 5000), 0);
  ck_assert_str_eq(worker_host(d, 0), "h");
  ck_assert_int_eq(psd_clock_holder(d, 0, "h", 10, NULL, &eb), 0);
  ck_assert_int_eq(psd_clock_register(d, "m", "h", 12, "cpu", 5100, &r, &sc, &eb), 0);
  ck_assert_uint_eq(r, 2);
  psd_clock_free(d);
  /* version 2's worker lines hold the new fields, a model name among them */
  static const char *const bad[] = {
      "psd-clock 2\njob 0 data 0 parts 8\nworker 0 0 1 0 0 100 0 h\nend\n",
      "psd-clock 2\njob 0 data 0 parts 8\nworker 0 0 1 0 0 100 0 1 10 m/x h\nend\n",
      "psd-clock 3\njob 0 data 0 parts 8\nend\n"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    d = tclock(0);
    ck_assert_int_eq(psd_clock_load(d, bad[i], 5000, &eb), PS_EFORMAT);
    ck_assert_msg(strstr(eb.msg, "line "), "%s", eb.msg);
    psd_clock_free(d);
  }
}
END_TEST

/* A stalled loop (a long request, a stopped process) is no worker's
 * silence: the beats it could not read arrive right after, so the stall
 * extends the leases it overlapped; a worker silent past that still
 * expires, and status shows its true age meanwhile. */
START_TEST(test_stall_extends_leases) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 100, &eb), 0);
  ck_assert_int_eq(psd_clock_heartbeat(c, 1, "m", 0, 0, 0, "h", "cpu", 100, &eb), 0);
  /* the loop ran nothing from 200 to 14200 */
  psd_clock_stalled(c, 14000, 14200);
  ck_assert_uint_eq(psd_clock_next_ms(c, 14200), 100 + 1000 + 14000);
  psd_clock_tick(c, 14200);
  ck_assert_int_eq(texpired, 0);
  psd_worker_info in;
  psd_clock_worker(c, 0, 14200, &in);
  ck_assert_uint_eq(in.age_ms, 14100);
  ck_assert_int_ne(in.state, PSD_WORKER_DEAD);
  /* w0's queued beat is read; w1 stays silent and expires a lease later */
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 14210, &eb), 0);
  psd_clock_tick(c, 15099);
  ck_assert_int_eq(texpired, 0);
  psd_clock_tick(c, 15100);
  ck_assert_int_eq(texpired, 1);
  ck_assert_uint_eq(texpired_worker, 1);
  /* the beat read cleared w0's credit: its next silence counts in full */
  psd_clock_tick(c, 15210);
  ck_assert_int_eq(texpired, 2);
  ck_assert_uint_eq(texpired_worker, 0);
  psd_clock_free(c);
}
END_TEST

/* A worker that left (SIGTERM) while its pull was parked shows how long
 * ago it last spoke, growing: a parked pull is a live worker's sign of
 * life, not a departed one's, and its later release is no word of it
 * (status showed such a worker DEAD with its heartbeat "0.0s ago"). */
START_TEST(test_left_age_grows) {
  psd_clock *c = tclock(0);
  ps_errbuf eb;
  tpark a;
  tpark_init(&a);
  ck_assert_int_eq(psd_clock_heartbeat(c, 0, "m", 0, 0, 0, "h", "cpu", 0, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 1, 0, 0, &a.p, &eb), 0);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 0, 0, 100, &eb), 0);
  ck_assert_int_eq(psd_clock_pull(c, "m", 0, 1, 100, &a.p, &eb), 1); /* parked for w1 */
  psd_clock_leave(c, 0, 100, 0);
  psd_worker_info in;
  psd_clock_worker(c, 0, 600, &in);
  ck_assert_int_eq(in.state, PSD_WORKER_DEAD);
  ck_assert_uint_eq(in.age_ms, 500);
  ck_assert_int_eq(psd_clock_pushed(c, "m", 1, 0, 700, &eb), 0); /* releases w0's pull */
  ck_assert_int_eq(a.released, 1);
  psd_clock_worker(c, 0, 900, &in);
  ck_assert_int_eq(in.state, PSD_WORKER_DEAD);
  ck_assert_uint_eq(in.age_ms, 800);
  psd_clock_free(c);
}
END_TEST

Suite *psd_clock_suite(void) {
  Suite *s = suite_create("psd_clock");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_bsp_parks_until_push);
  tcase_add_test(tc, test_register_refused_beside_fixed);
  tcase_add_test(tc, test_step_out);
  tcase_add_test(tc, test_moved_on_after_step_out);
  tcase_add_test(tc, test_moved_on_after_rejoin_provisional);
  tcase_add_test(tc, test_expired_refused_until_rejoin);
  tcase_add_test(tc, test_ssp_bound);
  tcase_add_test(tc, test_asp_never_parks);
  tcase_add_test(tc, test_lease_expiry_releases);
  tcase_add_test(tc, test_parked_timeout);
  tcase_add_test(tc, test_cancel_and_release_all);
  tcase_add_test(tc, test_register_ranks);
  tcase_add_test(tc, test_reentrant_release);
  tcase_add_test(tc, test_register_holds_leave_releases);
  tcase_add_test(tc, test_partitions_progress_and_failover);
  tcase_add_test(tc, test_partitions_more_epochs);
  tcase_add_test(tc, test_partition_empty);
  tcase_add_test(tc, test_save_load);
  tcase_add_test(tc, test_world_bounds_table);
  tcase_add_test(tc, test_silent_ms);
  tcase_add_test(tc, test_restart_keeps_ranks);
  tcase_add_test(tc, test_restart_counts_retrained);
  tcase_add_test(tc, test_restart_before_first_claim);
  tcase_add_test(tc, test_restart_lost_registration);
  tcase_add_test(tc, test_restart_lost_registration_taken);
  tcase_add_test(tc, test_holder);
  tcase_add_test(tc, test_rejoin_takes_dead_registered_rank);
  tcase_add_test(tc, test_taken_rank_refuses_old_holder);
  tcase_add_test(tc, test_restart_keeps_fixed_and_taken);
  tcase_add_test(tc, test_stall_extends_leases);
  tcase_add_test(tc, test_silent_ms_stall);
  tcase_add_test(tc, test_left_age_grows);
  suite_add_tcase(s, tc);
  return s;
}
