/* payload_tasks.h — the OTA payload task queue run by the scheduler's libuv loop.
 *
 * Pending rows of the payloads table (storage/release.c) are computed by child processes
 * `mopt pack TARGET -o TMP` / `mopt delta BASE TARGET -o TMP` (started through moptd's exec
 * helper, so they die with the daemon), then the output is adopted as a blob on libuv's thread
 * pool and the row marked ready (or failed with the child's stderr tail). SQLite is the queue:
 * a row is taken by whichever loop sees it pending and not already running here, so nothing is
 * lost on a crash (the row is still pending at the next start). Every call below is made on
 * the loop thread only.
 */
#ifndef SRV_PAYLOAD_TASKS_H
#define SRV_PAYLOAD_TASKS_H

#include <uv.h>

#include "srv.h"

typedef struct srv_ptasks srv_ptasks;

/* Creates the queue on loop (nothing runs until srv_ptasks_poll). self_exe/self_pid are the
 * exec helper (srv_exec_worker), mopt the binary to run. Returns NULL on out of memory. */
srv_ptasks *srv_ptasks_create(uv_loop_t *loop, api_ctx *ctx, const srv_config *cfg,
                              const char *self_exe, const char *self_pid, const char *mopt);
/* Starts children for pending rows (at most 2 at once) and repeats recent wake-ups of
 * manifest long-polls. Cheap when there is nothing to do (one indexed SELECT). */
void srv_ptasks_poll(srv_ptasks *t);
/* Shutdown: no new children; running ones are SIGKILLed (their rows stay pending and are
 * computed again at the next start). */
void srv_ptasks_stop(srv_ptasks *t);
/* Frees t once the loop has ended (every child handle closed). NULL is a no-op. */
void srv_ptasks_destroy(srv_ptasks *t);

#endif
