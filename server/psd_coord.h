/* psd_coord: the coordinator shard's share of data failover — the
 * partition progress workers report and claim through their heartbeats
 * (psd_clock.h invariant 7), what ListWorkers shows of it, and the clock
 * table persisted to DATA_DIR/coordinator.state (invariant 10).
 *
 * Persistence: the table is written to a temporary file, fsync'd and
 * renamed over coordinator.state at most every PSD_COORD_SAVE_MS while it
 * changes, and once more when the shard stops; a coordinator that
 * restarts reads it back before it serves.  A crash loses at most the
 * last PSD_COORD_SAVE_MS of progress: offsets then lag behind what was
 * trained, so those samples are trained again, never skipped.  The
 * timer's saves are written by libuv's thread pool (one at a time), so the
 * file's fsyncs never stall the loop; psd_coord_save and the save at stop
 * write on the loop, after the one in flight.
 *
 * Every function runs on the shard's loop thread. */
#ifndef PSD_COORD_H
#define PSD_COORD_H

#include "ps.pb-c.h"
#include "psd_shard.h"

#define PSD_COORD_SAVE_MS 100

/* psd_coord_restore loads DATA_DIR/coordinator.state into SH's fresh
 * clock table when the file exists (a missing file is a first start) and
 * starts the save timer.  Returns 0 or PS_EFORMAT / PS_EIO naming the
 * file.  Only on the coordinator. */
int psd_coord_restore(psd_shard *sh, ps_errbuf *eb);

/* psd_coord_save writes the table now when it changed (and FORCE: even
 * when not); failures are logged (the next save retries). */
void psd_coord_save(psd_shard *sh, int force);

/* psd_coord_save_soon starts the next background save now rather than at
 * the timer's next tick: a registration hands out a rank that a restart
 * must know (psd_clock_register matches a worker's host and pid), and a
 * crash within the 100 ms between ticks lost it, so the worker found no
 * rank of its own after the restart.  Nothing when no timer runs. */
void psd_coord_save_soon(psd_shard *sh);

/* psd_coord_stop saves a last time and closes the save timer (the handle
 * is closed by the loop's next run). */
void psd_coord_stop(psd_shard *sh);

/* psd_coord_heartbeat handles the coordinator fields of REQ (progress,
 * claim, data size) for a live worker, filling REPLY's granted, job_done
 * and refused (malloc'd: psd_coord_heartbeat_release).  0 or a PS_E*
 * code. */
int psd_coord_heartbeat(psd_shard *sh, const Ps__HeartbeatRequest *req,
                        Ps__HeartbeatReply *reply, uint64_t now_ms, ps_errbuf *eb);
void psd_coord_heartbeat_release(Ps__HeartbeatReply *reply);

/* psd_coord_list adds the partition table and the epoch counts to REPLY
 * (malloc'd: psd_coord_list_release); PS_ENOMEM. */
int psd_coord_list(psd_shard *sh, Ps__ListWorkersReply *reply, ps_errbuf *eb);
void psd_coord_list_release(Ps__ListWorkersReply *reply);

#endif
