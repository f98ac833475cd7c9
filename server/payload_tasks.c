/* payload_tasks.c — computes pending OTA payloads with `mopt pack|delta` child processes on the
 * scheduler's libuv loop (see payload_tasks.h).
 *
 * Each task: resolve the blob paths of target (and base), a temp output under tmp/, spawn the
 * child (stdout ignored, stderr kept as a tail for the error message), a wall-time limit
 * (cfg->job_timeout_s, then SIGKILL). On exit 0 the output is hashed and published as a blob
 * and the row marked ready on libuv's thread pool (a large payload never stalls the loop);
 * otherwise the row is marked failed. Then the manifest requests waiting on that row's key are
 * woken, and woken again on the next few ticks, because a request that read "pending" just
 * before the row changed may link its waiter just after the first notification.
 * Trade-off: at most MAX_RUNNING children at once and separate from the job workers' limit, so
 * a burst of new bases cannot starve optimization jobs, at the price of a queue of deltas
 * waiting behind each other (the manifest answers with the full payload meanwhile).
 */
#include "payload_tasks.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_RUNNING 2
#define MAX_PENDING_SCAN 16
#define RENOTIFY_MS 1500
#define N_RECENT 32

typedef struct ptask {
  struct srv_ptasks *t;
  uv_process_t proc;
  uv_pipe_t err;
  uv_timer_t timer;
  uv_work_t work;
  store_payload row;
  char out_path[PATH_MAX];
  char tail[1024];
  size_t tail_len;
  int64_t exit_status;
  int term_signal;
  int pending;               /* exit + stderr EOF still to come */
  int handles_open;
  int killed;
  int shutdown;              /* killed by srv_ptasks_stop (copied on the loop thread) */
  int64_t started_us;
  int ok;                    /* outcome, set on the thread pool */
  char digest[65];
  uint64_t size;
  char error[256];
  struct ptask *next;
} ptask;

typedef struct recent { char key[40]; int64_t until_ms; } recent;

struct srv_ptasks {
  uv_loop_t *loop;
  api_ctx *ctx;
  const srv_config *cfg;
  char self_exe[PATH_MAX], self_pid[24], mopt[PATH_MAX];
  ptask *running;
  unsigned n_running;
  int stopping;
  recent recent[N_RECENT];
  unsigned recent_next;
};

srv_ptasks *srv_ptasks_create(uv_loop_t *loop, api_ctx *ctx, const srv_config *cfg,
                              const char *self_exe, const char *self_pid, const char *mopt) {
  srv_ptasks *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->loop = loop;
  t->ctx = ctx;
  t->cfg = cfg;
  snprintf(t->self_exe, sizeof t->self_exe, "%s", self_exe);
  snprintf(t->self_pid, sizeof t->self_pid, "%s", self_pid);
  snprintf(t->mopt, sizeof t->mopt, "%s", mopt);
  return t;
}

static void wait_key(int64_t seq, char key[40]) {
  snprintf(key, 40, "%s%lld", API_OTA_WAIT_PREFIX, (long long)seq);
}

static void remember(srv_ptasks *t, int64_t seq) {
  recent *r = &t->recent[t->recent_next++ % N_RECENT];
  wait_key(seq, r->key);
  r->until_ms = srv_now_ms() + RENOTIFY_MS;
  srv_waiters_notify(r->key);
}

static void task_log(int level, const char *event, const ptask *p, const char *k, int64_t v,
                     const char *error) {
  if (!srv_log_enabled(level)) return;
  char buf[2048];
  srv_jbuf j;
  srv_log_begin(&j, buf, sizeof buf, level, event);
  srv_jbuf_int(&j, "payload", p->row.seq);
  srv_jbuf_str(&j, "kind", p->row.kind);
  srv_jbuf_str(&j, "base", p->row.base[0] ? p->row.base : NULL);
  srv_jbuf_str(&j, "target", p->row.target);
  if (k) srv_jbuf_int(&j, k, v);
  if (p->digest[0]) srv_jbuf_str(&j, "digest", p->digest);
  if (p->ok) srv_jbuf_int(&j, "size", (int64_t)p->size);
  if (error) srv_jbuf_str(&j, "error", error);
  srv_log_emit(&j);
}

/* Marks a row failed before or without a child (a missing blob, a spawn error). */
static void fail_row(srv_ptasks *t, const store_payload *row, const char *msg) {
  store_conn *c = store_conn_get(t->ctx->st);
  if (c) store_payload_fail(c, row->seq, msg);
  srv_log_msg(SRV_LOG_WARN, "payload_failed", "payload %lld (%s → %s): %s",
              (long long)row->seq, row->base[0] ? row->base : "full", row->target, msg);
  remember(t, row->seq);
}

static void on_handle_closed(uv_handle_t *h) {
  ptask *p = h->data;
  if (--p->handles_open == 0) free(p);
}

static void work_cb(uv_work_t *req) {
  ptask *p = req->data;
  srv_ptasks *t = p->t;
  store_conn *c = store_conn_get(t->ctx->st);
  if (!c) {
    snprintf(p->error, sizeof p->error, "no database connection");
    unlink(p->out_path);
    return;
  }
  if (p->shutdown) {   /* shutdown: leave the row pending for the next start */
    unlink(p->out_path);
    p->error[0] = 0;
    return;
  }
  if (!p->term_signal && p->exit_status == 0) {
    int existed = 0;
    int rc = store_blob_adopt(t->ctx->st, p->out_path, p->digest, &p->size, &existed);
    if (rc == 0) rc = store_payload_ready(c, p->row.seq, p->digest, p->size);
    /* ECONFLICT: another moptd on the same data dir finished this row first (the encoder is
     * deterministic, so it published the same blob). */
    if (rc == 0 || rc == MOPT_ECONFLICT) {
      p->ok = 1;
      return;
    }
    snprintf(p->error, sizeof p->error, "cannot store the payload: %s", mopt_strerror(rc));
    unlink(p->out_path);
  } else {
    unlink(p->out_path);
    char tail[sizeof p->tail + 1];
    memcpy(tail, p->tail, p->tail_len);
    tail[p->tail_len] = 0;
    while (p->tail_len && (tail[strlen(tail) - 1] == '\n')) tail[strlen(tail) - 1] = 0;
    srv_utf8_sanitize(tail);
    const char *last = strrchr(tail, '\n');
    last = last ? last + 1 : tail;
    if (p->killed)
      snprintf(p->error, sizeof p->error, "mopt %s exceeded the time limit of %u s",
               p->row.kind[0] == 'd' ? "delta" : "pack", t->cfg->job_timeout_s);
    else if (p->term_signal)
      snprintf(p->error, sizeof p->error, "mopt %s died with signal %d",
               p->row.kind[0] == 'd' ? "delta" : "pack", p->term_signal);
    else
      snprintf(p->error, sizeof p->error, "mopt %s exited with status %lld: %.180s",
               p->row.kind[0] == 'd' ? "delta" : "pack", (long long)p->exit_status, last);
  }
  store_payload_fail(c, p->row.seq, p->error);
}

static void after_work(uv_work_t *req, int status) {
  ptask *p = req->data;
  srv_ptasks *t = p->t;
  (void)status;
  for (ptask **pp = &t->running; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  t->n_running--;
  int64_t ms = (srv_mono_us() - p->started_us) / 1000;
  if (p->ok) task_log(SRV_LOG_INFO, "payload_ready", p, "duration_ms", ms, NULL);
  else if (p->error[0]) task_log(SRV_LOG_WARN, "payload_failed", p, "duration_ms", ms, p->error);
  if (p->ok || p->error[0]) remember(t, p->row.seq);
  p->handles_open = 2;
  uv_close((uv_handle_t *)&p->proc, on_handle_closed);
  uv_close((uv_handle_t *)&p->timer, on_handle_closed);
  if (!t->stopping) srv_ptasks_poll(t);
}

static void finish_if_done(ptask *p) {
  if (p->pending > 0) return;
  uv_timer_stop(&p->timer);
  p->shutdown = p->killed && p->t->stopping;
  p->work.data = p;
  if (uv_queue_work(p->t->loop, &p->work, work_cb, after_work) != 0) {
    work_cb(&p->work);
    after_work(&p->work, 0);
  }
}

static void on_exit_cb(uv_process_t *proc, int64_t exit_status, int term_signal) {
  ptask *p = proc->data;
  p->exit_status = exit_status;
  p->term_signal = term_signal;
  p->pending--;
  finish_if_done(p);
}

static void on_err_closed(uv_handle_t *h) {
  ptask *p = h->data;
  p->pending--;
  finish_if_done(p);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static _Thread_local char slab[4096];
  (void)h;
  (void)suggested;
  buf->base = slab;
  buf->len = sizeof slab;
}

static void on_stderr(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  ptask *p = st->data;
  if (nread < 0) {
    uv_close((uv_handle_t *)st, on_err_closed);
    return;
  }
  for (ssize_t i = 0; i < nread; i++) {   /* keep the last bytes */
    if (p->tail_len == sizeof p->tail) {
      memmove(p->tail, p->tail + 1, sizeof p->tail - 1);
      p->tail_len--;
    }
    p->tail[p->tail_len++] = buf->base[i];
  }
}

static void on_timeout(uv_timer_t *tm) {
  ptask *p = tm->data;
  if (p->pending > 0 && !p->killed) {
    p->killed = 1;
    uv_process_kill(&p->proc, SIGKILL);
  }
}

static int is_running(const srv_ptasks *t, int64_t seq) {
  for (const ptask *p = t->running; p; p = p->next)
    if (p->row.seq == seq) return 1;
  return 0;
}

static void spawn(srv_ptasks *t, const store_payload *row) {
  store *st = t->ctx->st;
  char base_path[PATH_MAX] = "", target_path[PATH_MAX], msg[512];
  int delta = strcmp(row->kind, "delta") == 0;
  if (strncmp(row->target, "sha256:", 7) != 0 ||
      store_blob_path(st, row->target + 7, target_path, sizeof target_path) != 0) {
    snprintf(msg, sizeof msg, "target model %.80s has no blob in the store", row->target);
    fail_row(t, row, msg);
    return;
  }
  if (delta && (strncmp(row->base, "sha256:", 7) != 0 ||
                store_blob_path(st, row->base + 7, base_path, sizeof base_path) != 0)) {
    snprintf(msg, sizeof msg, "base model %.80s has no blob in the store", row->base);
    fail_row(t, row, msg);
    return;
  }
  ptask *p = calloc(1, sizeof *p);
  if (!p) return;   /* still pending: retried on the next poll */
  p->t = t;
  p->row = *row;
  if (store_tmp_path(st, ".payload", p->out_path, sizeof p->out_path) != 0) {
    free(p);
    fail_row(t, row, "cannot make a temp path for the payload");
    return;
  }
  char *args[12];
  int n = 0;
  args[n++] = t->self_exe;
  args[n++] = SRV_EXEC_WORKER_FLAG;
  args[n++] = t->self_pid;
  args[n++] = t->mopt;
  args[n++] = delta ? "delta" : "pack";
  if (delta) args[n++] = base_path;
  args[n++] = target_path;
  args[n++] = "-o";
  args[n++] = p->out_path;
  args[n] = NULL;
  uv_pipe_init(t->loop, &p->err, 0);
  p->err.data = p->proc.data = p->timer.data = p;
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_IGNORE;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&p->err;
  uv_process_options_t opt;
  memset(&opt, 0, sizeof opt);
  opt.exit_cb = on_exit_cb;
  opt.file = t->self_exe;
  opt.args = args;
  opt.stdio_count = 3;
  opt.stdio = stdio;
  p->started_us = srv_mono_us();
  int e = uv_spawn(t->loop, &p->proc, &opt);
  if (e != 0) {
    snprintf(msg, sizeof msg, "cannot start '%.300s': %s", t->mopt, uv_strerror(e));
    p->handles_open = 2;
    uv_close((uv_handle_t *)&p->proc, on_handle_closed);
    uv_close((uv_handle_t *)&p->err, on_handle_closed);
    fail_row(t, row, msg);
    return;
  }
  p->pending = 2;
  uv_read_start((uv_stream_t *)&p->err, alloc_cb, on_stderr);
  uv_timer_init(t->loop, &p->timer);
  uv_timer_start(&p->timer, on_timeout, (uint64_t)t->cfg->job_timeout_s * 1000, 0);
  p->next = t->running;
  t->running = p;
  t->n_running++;
  task_log(SRV_LOG_INFO, "payload_spawn", p, "pid", p->proc.pid, NULL);
}

void srv_ptasks_poll(srv_ptasks *t) {
  if (!t) return;
  int64_t now = srv_now_ms();
  for (unsigned i = 0; i < N_RECENT; i++)
    if (t->recent[i].key[0] && t->recent[i].until_ms >= now) srv_waiters_notify(t->recent[i].key);
  if (t->stopping || t->n_running >= MAX_RUNNING) return;
  store_conn *c = store_conn_get(t->ctx->st);
  if (!c) return;
  store_payload rows[MAX_PENDING_SCAN];
  uint32_t n = 0;
  if (store_payload_pending(c, MAX_PENDING_SCAN, rows, &n) != 0) return;
  for (uint32_t i = 0; i < n && t->n_running < MAX_RUNNING; i++)
    if (!is_running(t, rows[i].seq)) spawn(t, &rows[i]);
}

void srv_ptasks_stop(srv_ptasks *t) {
  if (!t || t->stopping) return;
  t->stopping = 1;
  for (ptask *p = t->running; p; p = p->next)
    if (p->pending > 0 && !p->killed) {
      p->killed = 1;
      uv_process_kill(&p->proc, SIGKILL);
    }
}

void srv_ptasks_destroy(srv_ptasks *t) { free(t); }
