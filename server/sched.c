/* sched.c — the job scheduler: one libuv loop thread owning the queue and the worker processes.
 *
 * The queue itself lives in SQLite (store_job_claim takes the oldest queued job); this thread
 * claims jobs while fewer than cfg->workers run, spawns `mopt worker …` per job with uv_spawn,
 * reads its JSON-lines progress from a pipe, logs its stderr, enforces the wall-time limit
 * (SIGTERM, then SIGKILL 2 s later), cancels (SIGTERM, SIGKILL after 500 ms) and, when the
 * process is gone and both pipes hit EOF, records the outcome. Other threads reach the loop
 * only through uv_async_send (submitted / cancel / stop). Every job state change wakes the
 * long-poll waiters of that job.
 * Trade-off: finishing a job (hashing and validating the output model, SQLite writes) runs on
 * libuv's thread pool via uv_queue_work so a 1 GiB output never stalls progress reading or
 * cancellation of the other workers; the loop thread itself only does short SQLite writes.
 */
#include "srv.h"
#include "payload_tasks.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define CANCEL_KILL_MS 500
#define TERM_KILL_MS 2000
#define TICK_MS 100
#define MAX_REPORT_BYTES (64u * 1024u * 1024u)

enum { KILL_NONE = 0, KILL_TIMEOUT = 1, KILL_CANCEL = 2, KILL_SHUTDOWN = 3 };

typedef struct worker {
  struct srv_sched *s;
  uv_process_t proc;
  uv_pipe_t out, err;
  uv_timer_t timer;
  uv_work_t work;
  char job[40];
  char model[72];
  char in_path[PATH_MAX], spec_path[PATH_MAX], out_path[PATH_MAX], report_path[PATH_MAX];
  char anchor_path[PATH_MAX];  /* blob of the spec's "anchor" model; "" when none */
  char line[16384];
  size_t line_len;
  int line_overflow;
  char eline[2048];
  size_t eline_len;
  char tail[2048];           /* last stderr bytes, ring */
  size_t tail_pos, tail_len;
  int got_error_event;
  char ev_code[48], ev_msg[512], ev_where[256];
  int kill_reason;
  int sent_kill;
  int64_t exit_status;
  int term_signal;
  int pending;               /* exit + 2 EOFs still to come */
  int exited;                /* the process is gone (and reaped: its pid may be reused) */
  int handles_open;
  int64_t started_us;
  double last_progress;
  int64_t last_progress_us;
  char last_step[64];
  /* outcome, filled on the thread pool */
  char final_state[16];
  char *error_json;
  struct worker *next;
} worker;

struct srv_sched {
  uv_loop_t loop;
  uv_async_t async;
  uv_timer_t tick;
  uv_thread_t thread;
  const srv_config *cfg;
  api_ctx *ctx;
  pthread_mutex_t mu;
  char (*cancels)[40];
  size_t n_cancels, cap_cancels;
  int stop_requested;        /* under mu */
  int closed;                /* under mu: async no longer valid */
  int stopping;              /* loop thread only */
  worker *workers;
  unsigned n_running;
  unsigned ticks;
  char mopt[PATH_MAX];
  char self_exe[PATH_MAX];   /* moptd itself, the exec helper (srv_exec_worker) */
  char self_pid[24];
  srv_ptasks *ptasks;        /* OTA payload computations (payload_tasks.c) */
};

static void pump(srv_sched *s);

/* --------------------------------------------------------------- helpers ---- */
static void job_log(int level, const char *event, const worker *w, const char *k1,
                    const char *v1, const char *k2, int64_t v2) {
  if (!srv_log_enabled(level)) return;
  char buf[2048];
  srv_jbuf j;
  srv_log_begin(&j, buf, sizeof buf, level, event);
  srv_jbuf_str(&j, "job", w->job);
  if (k1) srv_jbuf_str(&j, k1, v1);
  if (k2) srv_jbuf_int(&j, k2, v2);
  srv_log_emit(&j);
}

static void notify(const char *job) { srv_waiters_notify(job); }

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return MOPT_EIO;
  size_t n = strlen(text), off = 0;
  while (off < n) {
    ssize_t w = write(fd, text + off, n - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      close(fd);
      return MOPT_EIO;
    }
    off += (size_t)w;
  }
  return close(fd) == 0 ? 0 : MOPT_EIO;
}

/* Reads a whole small file (NUL-terminated, malloc'd) or NULL. */
static char *read_small(const char *path, size_t max) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size > max) {
    close(fd);
    return NULL;
  }
  char *buf = malloc((size_t)st.st_size + 1);
  size_t off = 0;
  while (buf && off < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + off, (size_t)st.st_size - off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    off += (size_t)r;
  }
  close(fd);
  if (buf) buf[off] = 0;
  return buf;
}

static void tail_add(worker *w, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    w->tail[w->tail_pos] = p[i];
    w->tail_pos = (w->tail_pos + 1) % sizeof w->tail;
    if (w->tail_len < sizeof w->tail) w->tail_len++;
  }
}

static void tail_get(const worker *w, char *out, size_t n) {
  size_t len = w->tail_len < n - 1 ? w->tail_len : n - 1;
  size_t start = (w->tail_pos + sizeof w->tail - len) % sizeof w->tail;
  for (size_t i = 0; i < len; i++) out[i] = w->tail[(start + i) % sizeof w->tail];
  out[len] = 0;
}

/* --------------------------------------------------------- stdout events ---- */
static void on_event_line(worker *w, const char *line, size_t n) {
  json_error_t je;
  json_t *ev = json_loadb(line, n, 0, &je);
  if (!ev || !json_is_object(ev)) {
    json_decref(ev);
    job_log(SRV_LOG_WARN, "worker_bad_line", w, "line", line, NULL, 0);
    return;
  }
  const char *kind = json_string_value(json_object_get(ev, "event"));
  if (kind && strcmp(kind, "progress") == 0) {
    json_t *pv = json_object_get(ev, "progress");
    const char *step = json_string_value(json_object_get(ev, "step"));
    double p = json_is_number(pv) ? json_number_value(pv) : w->last_progress;
    if (!(p >= 0)) p = 0;
    if (p > 1) p = 1;
    int64_t now = srv_mono_us();
    int step_changed = step && strncmp(step, w->last_step, sizeof w->last_step - 1) != 0;
    if (step_changed || p - w->last_progress >= 0.01 || p >= 1.0 ||
        now - w->last_progress_us >= 250000) {
      store_conn *c = store_conn_get(w->s->ctx->st);
      if (c && store_job_progress(c, w->job, p, step ? step : w->last_step) == 0) notify(w->job);
      w->last_progress = p;
      w->last_progress_us = now;
      if (step) snprintf(w->last_step, sizeof w->last_step, "%s", step);
    }
  } else if (kind && strcmp(kind, "error") == 0) {
    w->got_error_event = 1;
    const char *code = json_string_value(json_object_get(ev, "code"));
    const char *msg = json_string_value(json_object_get(ev, "message"));
    const char *where = json_string_value(json_object_get(ev, "where"));
    snprintf(w->ev_code, sizeof w->ev_code, "%s", code ? code : "worker_failed");
    snprintf(w->ev_msg, sizeof w->ev_msg, "%s", msg ? msg : "worker reported an error");
    snprintf(w->ev_where, sizeof w->ev_where, "%s", where ? where : "");
  } else if (kind && strcmp(kind, "done") == 0) {
    job_log(SRV_LOG_DEBUG, "worker_done", w, NULL, NULL, "output_bytes",
            json_integer_value(json_object_get(ev, "output_bytes")));
  }
  json_decref(ev);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static _Thread_local char slab[65536];
  (void)h;
  (void)suggested;
  buf->base = slab;
  buf->len = sizeof slab;
}

static void finish_if_done(worker *w);

static void on_pipe_closed(uv_handle_t *h) {
  worker *w = h->data;
  w->pending--;
  finish_if_done(w);
}

static void on_stdout(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  worker *w = st->data;
  if (nread < 0) {
    if (w->line_len && !w->line_overflow) on_event_line(w, w->line, w->line_len);
    w->line_len = 0;
    uv_close((uv_handle_t *)st, on_pipe_closed);
    return;
  }
  for (ssize_t i = 0; i < nread; i++) {
    char ch = buf->base[i];
    if (ch == '\n') {
      if (!w->line_overflow && w->line_len) on_event_line(w, w->line, w->line_len);
      w->line_len = 0;
      w->line_overflow = 0;
    } else if (w->line_len + 1 < sizeof w->line) {
      w->line[w->line_len++] = ch;
    } else {
      w->line_overflow = 1;
    }
  }
}

static void stderr_line(worker *w) {
  if (!w->eline_len) return;
  w->eline[w->eline_len] = 0;
  job_log(SRV_LOG_INFO, "worker_stderr", w, "line", w->eline, NULL, 0);
  w->eline_len = 0;
}

static void on_stderr(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  worker *w = st->data;
  if (nread < 0) {
    stderr_line(w);
    uv_close((uv_handle_t *)st, on_pipe_closed);
    return;
  }
  tail_add(w, buf->base, (size_t)nread);
  for (ssize_t i = 0; i < nread; i++) {
    char ch = buf->base[i];
    if (ch == '\n') stderr_line(w);
    else {
      if (w->eline_len + 1 >= sizeof w->eline) stderr_line(w);
      w->eline[w->eline_len++] = ch;
    }
  }
}

/* ----------------------------------------------------------------- kills ---- */
/* Signals the worker's whole process group (it leads its own session, see spawn), so anything
 * it started goes too. Never after exit: the pid may already belong to someone else. */
static void worker_signal(worker *w, int sig) {
  if (w->exited) return;
  if (kill(-w->proc.pid, sig) != 0) uv_process_kill(&w->proc, sig);
}

static void on_kill_timer(uv_timer_t *t) {
  worker *w = t->data;
  if (!w->exited && !w->sent_kill) {
    w->sent_kill = 1;
    worker_signal(w, SIGKILL);
  }
}

static void worker_stop(worker *w, int reason, uint64_t kill_after_ms) {
  if (w->kill_reason) {   /* already stopping: only shorten the grace period */
    if (reason == KILL_CANCEL) uv_timer_start(&w->timer, on_kill_timer, kill_after_ms, 0);
    return;
  }
  w->kill_reason = reason;
  worker_signal(w, SIGTERM);
  uv_timer_start(&w->timer, on_kill_timer, kill_after_ms, 0);
}

static void on_wall_timer(uv_timer_t *t) {
  worker *w = t->data;
  job_log(SRV_LOG_WARN, "job_timeout", w, NULL, NULL, "limit_s", w->s->cfg->job_timeout_s);
  worker_stop(w, KILL_TIMEOUT, TERM_KILL_MS);
}

/* -------------------------------------------------------------- outcome ---- */
static void set_error(worker *w, const char *code_in, const char *msg_in, const char *where_in) {
  char tail[2048], code[64], msg[1024], where[256];
  tail_get(w, tail, sizeof tail);
  snprintf(code, sizeof code, "%s", code_in ? code_in : "worker_failed");
  snprintf(msg, sizeof msg, "%s", msg_in ? msg_in : "worker failed");
  snprintf(where, sizeof where, "%s", where_in ? where_in : "");
  srv_utf8_sanitize(tail);
  srv_utf8_sanitize(code);
  srv_utf8_sanitize(msg);
  srv_utf8_sanitize(where);
  json_t *detail = json_object();
  json_object_set_new(detail, "exit_status",
                      w->term_signal ? json_null() : json_integer(w->exit_status));
  json_object_set_new(detail, "signal", w->term_signal ? json_integer(w->term_signal) : json_null());
  json_t *jt = json_string(tail);   /* NULL when the tail is not valid UTF-8 */
  json_object_set_new(detail, "stderr_tail", jt ? jt : json_string("(stderr is not UTF-8)"));
  if (*where) json_object_set_new(detail, "where", json_string(where));
  json_t *e = json_object();
  json_object_set_new(e, "code", json_string(code));
  json_t *jm = json_string(msg);
  json_object_set_new(e, "message", jm ? jm : json_string("worker failed"));
  json_object_set_new(e, "detail", detail);
  free(w->error_json);
  w->error_json = json_dumps(e, JSON_COMPACT);
  json_decref(e);
}

static void fail_reason(worker *w) {
  const srv_config *cfg = w->s->cfg;
  char msg[768];
  double elapsed_s = (double)(srv_mono_us() - w->started_us) / 1e6;
  if (w->kill_reason == KILL_TIMEOUT) {
    snprintf(msg, sizeof msg, "worker exceeded its time limit of %u s", cfg->job_timeout_s);
    set_error(w, "timeout", msg, NULL);
  } else if (w->term_signal == SIGXCPU ||
             (w->term_signal == SIGKILL && elapsed_s + 1.0 >= (double)cfg->job_timeout_s)) {
    snprintf(msg, sizeof msg, "worker exceeded its CPU time limit of %u s", cfg->job_timeout_s);
    set_error(w, "timeout", msg, NULL);
  } else if (w->term_signal == SIGKILL) {
    snprintf(msg, sizeof msg, "worker exceeded its memory limit of %u MiB (killed with SIGKILL)",
             cfg->job_memory_mb);
    set_error(w, "out_of_memory", msg, NULL);
  } else if (w->term_signal) {
    snprintf(msg, sizeof msg, "worker crashed with signal %d (%s)", w->term_signal,
             strsignal(w->term_signal));
    set_error(w, "worker_failed", msg, NULL);
  } else if (w->got_error_event) {
    if (strcmp(w->ev_code, "out_of_memory") == 0) {
      snprintf(msg, sizeof msg, "worker exceeded its memory limit of %u MiB: %s",
               cfg->job_memory_mb, w->ev_msg);
      set_error(w, "out_of_memory", msg, w->ev_where);
    } else {
      set_error(w, w->ev_code, w->ev_msg, w->ev_where);
    }
  } else if (w->exit_status == 127) {
    snprintf(msg, sizeof msg, "cannot execute the worker binary '%.600s' (exit status 127)",
             w->s->mopt);
    set_error(w, "worker_failed", msg, NULL);
  } else {
    snprintf(msg, sizeof msg, "worker exited with status %lld without reporting an error",
             (long long)w->exit_status);
    set_error(w, "worker_failed", msg, NULL);
  }
}

/* Thread pool: records the outcome in the store (may hash/validate a large output). */
static void finish_work(uv_work_t *req) {
  worker *w = req->data;
  srv_sched *s = w->s;
  store_conn *c = store_conn_get(s->ctx->st);
  int rc = MOPT_EINTERNAL;
  if (!c) {
    snprintf(w->final_state, sizeof w->final_state, "lost");
    return;
  }
  int ok = !w->term_signal && w->exit_status == 0;
  if (ok) {
    store_model parent, outm;
    int created = 0;
    mopt_diag d;
    memset(&d, 0, sizeof d);
    memset(&outm, 0, sizeof outm);
    if (store_model_get(c, w->model, &parent) != 0) snprintf(parent.name, sizeof parent.name, "output");
    rc = api_model_register_file(s->ctx, w->out_path, parent.name, w->job, w->model, w->job, &outm,
                                 &created, &d);
    if (rc == 0) {
      char *report = read_small(w->report_path, MAX_REPORT_BYTES);
      /* Validated once here so GET /v1/jobs/{id} can splice the stored text without parsing. */
      json_error_t je;
      json_t *parsed = report ? json_loads(report, 0, &je) : NULL;
      if (report && !json_is_object(parsed)) {
        srv_log_msg(SRV_LOG_WARN, "job_report_invalid", "job %s: worker report is not a JSON object (%s), "
                "stored without it", w->job, parsed ? "wrong type" : je.text);
        free(report);
        report = NULL;
      }
      json_decref(parsed);
      rc = store_job_succeed(c, w->job, outm.id, report);
      free(report);
      snprintf(w->final_state, sizeof w->final_state, rc == 0 ? "succeeded" : "lost");
      return;
    }
    char msg[768];
    snprintf(msg, sizeof msg, "worker output is not a valid model: %s",
             d.msg[0] ? d.msg : mopt_strerror(rc));
    set_error(w, mopt_errcode(rc), msg, d.where);
    unlink(w->out_path);
  } else if (w->kill_reason == KILL_SHUTDOWN) {
    rc = store_job_requeue(c, w->job);
    snprintf(w->final_state, sizeof w->final_state, rc == 0 ? "requeued" : "lost");
    unlink(w->out_path);
    return;
  } else if (w->kill_reason == KILL_CANCEL) {
    rc = store_job_cancelled(c, w->job);
    snprintf(w->final_state, sizeof w->final_state, rc == 0 ? "cancelled" : "lost");
    unlink(w->out_path);
    return;
  } else {
    fail_reason(w);
    unlink(w->out_path);
  }
  rc = store_job_fail(c, w->job, w->error_json);
  snprintf(w->final_state, sizeof w->final_state, rc == 0 ? "failed" : "lost");
}

static void on_handle_closed(uv_handle_t *h) {
  worker *w = h->data;
  if (--w->handles_open == 0) {
    free(w->error_json);
    free(w);
  }
}

static void after_finish(uv_work_t *req, int status) {
  worker *w = req->data;
  srv_sched *s = w->s;
  (void)status;
  unlink(w->spec_path);
  unlink(w->report_path);
  notify(w->job);
  if (strcmp(w->final_state, "lost") != 0) srv_metrics_job_event(w->final_state);
  if (srv_log_enabled(SRV_LOG_INFO)) {
    char buf[4096];
    srv_jbuf j;
    srv_log_begin(&j, buf, sizeof buf,
                  strcmp(w->final_state, "succeeded") == 0 ? SRV_LOG_INFO : SRV_LOG_WARN,
                  "job_finished");
    srv_jbuf_str(&j, "job", w->job);
    srv_jbuf_str(&j, "state", w->final_state);
    srv_jbuf_num(&j, "duration_ms", (double)(srv_mono_us() - w->started_us) / 1000.0);
    srv_jbuf_int(&j, "exit_status", w->exit_status);
    srv_jbuf_int(&j, "signal", w->term_signal);
    if (w->error_json) srv_jbuf_raw(&j, "error", w->error_json);
    srv_log_emit(&j);
  }
  for (worker **pp = &s->workers; *pp; pp = &(*pp)->next)
    if (*pp == w) {
      *pp = w->next;
      break;
    }
  s->n_running--;
  srv_metrics_sched(UINT64_MAX, s->n_running, s->cfg->workers);
  w->handles_open = 2;
  uv_close((uv_handle_t *)&w->timer, on_handle_closed);
  uv_close((uv_handle_t *)&w->proc, on_handle_closed);
  pump(s);
}

static void finish_if_done(worker *w) {
  if (w->pending > 0) return;
  uv_timer_stop(&w->timer);
  w->work.data = w;
  if (uv_queue_work(&w->s->loop, &w->work, finish_work, after_finish) != 0) {
    finish_work(&w->work);
    after_finish(&w->work, 0);
  }
}

static void on_exit_cb(uv_process_t *p, int64_t exit_status, int term_signal) {
  worker *w = p->data;
  w->exited = 1;
  w->exit_status = exit_status;
  w->term_signal = term_signal;
  w->pending--;
  finish_if_done(w);
}

/* ----------------------------------------------------------------- spawn ---- */
/* Marks a claimed job failed before any process ran (and wakes its waiters). */
static void fail_claimed(srv_sched *s, const char *job, const char *code, const char *msg) {
  store_conn *c = store_conn_get(s->ctx->st);
  json_t *e = json_pack("{s:s,s:s,s:{}}", "code", code, "message", msg, "detail");
  char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
  json_decref(e);
  if (c) store_job_fail(c, job, text);
  free(text);
  notify(job);
  srv_metrics_job_event("failed");
  srv_log_msg(SRV_LOG_ERROR, "job_failed", "job %s: %s", job, msg);
}

/* The hex digest of the (one) pass "anchor" in a stored, normalized spec; 0 when no pass has
 * one. The spec is the API's canonical JSON, so it parses; a pass anchor is a model id there. */
static int spec_anchor_hex(const char *spec, char hex[65]) {
  json_t *root = spec ? json_loads(spec, 0, NULL) : NULL;
  json_t *passes = json_object_get(root, "passes"), *p;
  size_t i;
  int found = 0;
  json_array_foreach(passes, i, p) {
    const char *a = json_string_value(json_object_get(p, "anchor"));
    if (a && strncmp(a, "sha256:", 7) == 0) {
      snprintf(hex, 65, "%.64s", a + 7);
      found = 1;
      break;
    }
  }
  json_decref(root);
  return found;
}

static void spawn(srv_sched *s, store_job *j) {
  store *st = s->ctx->st;
  char msg[PATH_MAX + 256];
  worker *w = calloc(1, sizeof *w);
  if (!w) {
    fail_claimed(s, j->id, "out_of_memory", "out of memory starting the worker");
    return;
  }
  w->s = s;
  snprintf(w->job, sizeof w->job, "%s", j->id);
  snprintf(w->model, sizeof w->model, "%s", j->model);
  const char *hex = strncmp(j->model, "sha256:", 7) == 0 ? j->model + 7 : j->model;
  if (store_blob_path(st, hex, w->in_path, sizeof w->in_path) != 0) {
    snprintf(msg, sizeof msg, "input model %s has no blob in the store", j->model);
    fail_claimed(s, j->id, "not_found", msg);
    free(w);
    return;
  }
  /* the API stored the anchor resolved to a model id: "anchor":"sha256:<64 hex>" */
  char ahex[65];
  if (spec_anchor_hex(j->spec, ahex)) {
    if (strlen(ahex) != 64 || store_blob_path(st, ahex, w->anchor_path, sizeof w->anchor_path) != 0) {
      snprintf(msg, sizeof msg, "anchor model sha256:%s has no blob in the store", ahex);
      fail_claimed(s, j->id, "not_found", msg);
      free(w);
      return;
    }
  }
  if (store_tmp_path(st, ".spec.json", w->spec_path, sizeof w->spec_path) != 0 ||
      store_tmp_path(st, ".onnx", w->out_path, sizeof w->out_path) != 0 ||
      store_tmp_path(st, ".report.json", w->report_path, sizeof w->report_path) != 0 ||
      write_file(w->spec_path, j->spec ? j->spec : "{}") != 0) {
    unlink(w->spec_path);
    fail_claimed(s, j->id, "io_error", "cannot write the worker's temp files");
    free(w);
    return;
  }
  char mem[24], cpu[24];
  snprintf(mem, sizeof mem, "%u", s->cfg->job_memory_mb);
  snprintf(cpu, sizeof cpu, "%u", s->cfg->job_timeout_s);
  if (access(s->mopt, X_OK) != 0) {
    snprintf(msg, sizeof msg, "cannot start the worker '%s': %s", s->mopt, strerror(errno));
    unlink(w->spec_path);
    fail_claimed(s, j->id, "worker_failed", msg);
    free(w);
    return;
  }
  /* Started through moptd's own exec helper so the worker dies with the daemon, even on
   * kill -9 (PR_SET_PDEATHSIG); see srv_exec_worker. */
  char *args[] = {s->self_exe, SRV_EXEC_WORKER_FLAG, s->self_pid, s->mopt, "worker", "--input",
                  w->in_path, "--spec", w->spec_path, "--output", w->out_path, "--report",
                  w->report_path, "--max-memory-mb", mem, "--max-cpu-s", cpu, NULL, NULL, NULL};
  if (w->anchor_path[0]) {
    args[17] = "--anchor";
    args[18] = w->anchor_path;
  }
  uv_pipe_init(&s->loop, &w->out, 0);
  uv_pipe_init(&s->loop, &w->err, 0);
  w->out.data = w->err.data = w->proc.data = w->timer.data = w;
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&w->out;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&w->err;
  uv_process_options_t opt;
  memset(&opt, 0, sizeof opt);
  opt.exit_cb = on_exit_cb;
  opt.file = s->self_exe;
  opt.args = args;
  opt.stdio_count = 3;
  opt.stdio = stdio;
  /* Own session and process group: a Ctrl-C on the daemon's terminal must not reach workers
   * (shutdown stops them itself and re-queues their jobs). */
  opt.flags = UV_PROCESS_DETACHED;
  w->started_us = srv_mono_us();
  int e = uv_spawn(&s->loop, &w->proc, &opt);
  if (e != 0) {
    snprintf(msg, sizeof msg, "cannot start the worker '%s': %s", s->mopt, uv_strerror(e));
    /* uv_spawn failed: the process handle must still be closed, and the pipes. */
    w->handles_open = 3;
    uv_close((uv_handle_t *)&w->proc, on_handle_closed);
    uv_close((uv_handle_t *)&w->out, on_handle_closed);
    uv_close((uv_handle_t *)&w->err, on_handle_closed);
    unlink(w->spec_path);
    fail_claimed(s, j->id, "worker_failed", msg);
    return;
  }
  w->pending = 3;
  uv_read_start((uv_stream_t *)&w->out, alloc_cb, on_stdout);
  uv_read_start((uv_stream_t *)&w->err, alloc_cb, on_stderr);
  uv_timer_init(&s->loop, &w->timer);
  uv_timer_start(&w->timer, on_wall_timer, (uint64_t)s->cfg->job_timeout_s * 1000, 0);
  w->next = s->workers;
  s->workers = w;
  s->n_running++;
  srv_metrics_job_event("started");
  job_log(SRV_LOG_INFO, "job_started", w, "model", w->model, "pid", w->proc.pid);
  notify(w->job);
}

static void pump(srv_sched *s) {
  store_conn *c = store_conn_get(s->ctx->st);
  while (c && !s->stopping && s->n_running < s->cfg->workers) {
    store_job j;
    memset(&j, 0, sizeof j);
    int e = store_job_claim(c, &j);
    if (e != 0) {
      if (e != MOPT_ENOTFOUND) srv_log_msg(SRV_LOG_ERROR, "scheduler", "claim failed: %s",
                                           mopt_strerror(e));
      store_job_free(&j);
      break;
    }
    /* The job is 'running' in the index from the claim on: count it now, so a scrape never
     * sees fewer running workers than the index says while the process is being started. */
    srv_metrics_sched(UINT64_MAX, s->n_running + 1, s->cfg->workers);
    spawn(s, &j);
    srv_metrics_sched(UINT64_MAX, s->n_running, s->cfg->workers);
    store_job_free(&j);
  }
  srv_metrics_sched(UINT64_MAX, s->n_running, s->cfg->workers);
}

/* ------------------------------------------------------------ cancel/stop ---- */
static void cancel_job(srv_sched *s, const char *job) {
  for (worker *w = s->workers; w; w = w->next)
    if (strcmp(w->job, job) == 0 && !w->exited) {
      job_log(SRV_LOG_INFO, "job_cancelling", w, NULL, NULL, "pid", w->proc.pid);
      worker_stop(w, KILL_CANCEL, CANCEL_KILL_MS);
    }
}

static void close_all(srv_sched *s) {
  pthread_mutex_lock(&s->mu);
  s->closed = 1;
  pthread_mutex_unlock(&s->mu);
  uv_close((uv_handle_t *)&s->async, NULL);
  uv_close((uv_handle_t *)&s->tick, NULL);
}

static void maybe_finish_stop(srv_sched *s) {
  if (s->stopping && !s->workers && !uv_is_closing((uv_handle_t *)&s->async)) close_all(s);
}

static void on_async(uv_async_t *a) {
  srv_sched *s = a->data;
  char (*cancels)[40];
  size_t n;
  int stop;
  pthread_mutex_lock(&s->mu);
  cancels = s->cancels;
  n = s->n_cancels;
  s->cancels = NULL;
  s->n_cancels = s->cap_cancels = 0;
  stop = s->stop_requested;
  pthread_mutex_unlock(&s->mu);
  for (size_t i = 0; i < n; i++) cancel_job(s, cancels[i]);
  free(cancels);
  if (stop && !s->stopping) {
    s->stopping = 1;
    for (worker *w = s->workers; w; w = w->next)
      if (!w->exited) worker_stop(w, KILL_SHUTDOWN, TERM_KILL_MS);
    srv_ptasks_stop(s->ptasks);
  }
  if (!s->stopping) pump(s);
  if (!s->stopping) srv_ptasks_poll(s->ptasks);
  maybe_finish_stop(s);
}

static void on_tick(uv_timer_t *t) {
  srv_sched *s = t->data;
  srv_waiters_expire(srv_now_ms());
  s->ticks++;
  if (s->stopping) {
    maybe_finish_stop(s);
    return;
  }
  srv_ptasks_poll(s->ptasks);
  if (s->ticks % 5 == 0) {   /* every 500 ms: cancel requests made without the hook */
    store_conn *c = store_conn_get(s->ctx->st);
    for (worker *w = s->workers; c && w; w = w->next) {
      if (w->exited || w->kill_reason) continue;
      store_job j;
      memset(&j, 0, sizeof j);
      if (store_job_get(c, w->job, &j) == 0 && j.cancel_requested) cancel_job(s, w->job);
      store_job_free(&j);
    }
  }
  if (s->ticks % 10 == 0) {  /* every second: gauges, and jobs queued by another path */
    store_conn *c = store_conn_get(s->ctx->st);
    uint64_t counts[5] = {0};
    if (c && store_job_counts(c, counts) == 0)
      srv_metrics_sched(counts[STORE_JOB_QUEUED], s->n_running, s->cfg->workers);
    pump(s);
  }
}

static void loop_main(void *arg) {
  srv_sched *s = arg;
  pump(s);
  uv_run(&s->loop, UV_RUN_DEFAULT);
}

static void resolve_mopt(const srv_config *cfg, char *out, size_t n) {
  if (cfg->mopt[0]) {
    snprintf(out, n, "%s", cfg->mopt);
    return;
  }
  char self[PATH_MAX - 16];
  ssize_t r = readlink("/proc/self/exe", self, sizeof self - 1);
  if (r <= 0) {
    snprintf(out, n, "mopt");
    return;
  }
  self[r] = 0;
  char *slash = strrchr(self, '/');
  if (slash) *slash = 0;
  size_t l = strlen(self);
  if (l + 6 > n) {
    snprintf(out, n, "mopt");
    return;
  }
  memcpy(out, self, l);
  memcpy(out + l, "/mopt", 6);
}

int srv_sched_start(const srv_config *cfg, api_ctx *ctx, srv_sched **out) {
  srv_sched *s = calloc(1, sizeof *s);
  if (!s) return MOPT_ENOMEM;
  s->cfg = cfg;
  s->ctx = ctx;
  resolve_mopt(cfg, s->mopt, sizeof s->mopt);
  ssize_t sl = readlink("/proc/self/exe", s->self_exe, sizeof s->self_exe - 1);
  if (sl <= 0) {
    free(s);
    return MOPT_EINTERNAL;
  }
  s->self_exe[sl] = 0;
  snprintf(s->self_pid, sizeof s->self_pid, "%ld", (long)getpid());
  pthread_mutex_init(&s->mu, NULL);
  if (uv_loop_init(&s->loop) != 0) {
    free(s);
    return MOPT_EINTERNAL;
  }
  s->ptasks = srv_ptasks_create(&s->loop, ctx, cfg, s->self_exe, s->self_pid, s->mopt);
  uv_async_init(&s->loop, &s->async, on_async);
  s->async.data = s;
  uv_timer_init(&s->loop, &s->tick);
  s->tick.data = s;
  uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
  if (access(s->mopt, X_OK) != 0)
    srv_log_msg(SRV_LOG_WARN, "scheduler", "worker binary '%s' is not executable (%s); jobs "
                "will fail until it exists", s->mopt, strerror(errno));
  srv_metrics_sched(0, 0, cfg->workers);
  if (uv_thread_create(&s->thread, loop_main, s) != 0) {
    uv_close((uv_handle_t *)&s->async, NULL);
    uv_close((uv_handle_t *)&s->tick, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    free(s);
    return MOPT_EINTERNAL;
  }
  srv_log_msg(SRV_LOG_INFO, "scheduler_started", "%u workers, worker binary %s", cfg->workers,
              s->mopt);
  *out = s;
  return 0;
}

static void wake(srv_sched *s) {
  pthread_mutex_lock(&s->mu);
  if (!s->closed) uv_async_send(&s->async);
  pthread_mutex_unlock(&s->mu);
}

void srv_sched_submitted(srv_sched *s) {
  if (s) wake(s);
}

void srv_sched_cancel(srv_sched *s, const char *job_id) {
  if (!s || !job_id) return;
  pthread_mutex_lock(&s->mu);
  if (s->n_cancels == s->cap_cancels) {
    size_t cap = s->cap_cancels ? s->cap_cancels * 2 : 8;
    char (*nc)[40] = realloc(s->cancels, cap * sizeof *nc);
    if (!nc) {
      pthread_mutex_unlock(&s->mu);
      return;   /* the 500 ms cancel_requested scan still catches it */
    }
    s->cancels = nc;
    s->cap_cancels = cap;
  }
  snprintf(s->cancels[s->n_cancels++], 40, "%s", job_id);
  if (!s->closed) uv_async_send(&s->async);
  pthread_mutex_unlock(&s->mu);
}

void srv_sched_stop(srv_sched *s) {
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  int already = s->stop_requested;
  s->stop_requested = 1;
  if (!s->closed) uv_async_send(&s->async);
  pthread_mutex_unlock(&s->mu);
  if (already) return;
  uv_thread_join(&s->thread);
  uv_loop_close(&s->loop);
}

void srv_sched_destroy(srv_sched *s) {
  if (!s) return;
  srv_sched_stop(s);
  pthread_mutex_destroy(&s->mu);
  free(s->cancels);
  srv_ptasks_destroy(s->ptasks);
  free(s);
}

int srv_exec_worker(int argc, char **argv) {
  if (argc < 4) return 2;
  /* Die with the daemon: the kernel sends SIGKILL when the spawning thread (the scheduler's
   * loop thread) goes away, which on kill -9 of moptd is at once. Survives execv. */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    fprintf(stderr, "moptd exec helper: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
    return 3;
  }
  /* The daemon may have died before prctl took effect. */
  if ((long)getppid() != atol(argv[2])) return 3;
  execv(argv[3], argv + 3);
  fprintf(stderr, "moptd exec helper: cannot execute '%s': %s\n", argv[3], strerror(errno));
  return 127;
}
