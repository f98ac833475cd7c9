/* srv.h — the moptd process: config, logging, metrics, long-poll waiters, the libuv job
 * scheduler and the libmicrohttpd adapter.
 *
 * Pieces and their threads:
 *   config.c   one option table → one srv_config (defaults < file < env < flags); main thread.
 *   log.c      JSON lines on stderr, one write(2) per line so lines never interleave.
 *   metrics.c  lock-free counters (relaxed atomics) rendered as Prometheus text.
 *   waiters.c  suspended long-poll requests keyed by job id; any thread may notify.
 *   sched.c    one libuv loop thread owning the job queue and the worker processes.
 *   http.c     libmicrohttpd (epoll thread pool) → api_route_find/api_authorize/handlers.
 *   main.c     start-up, signals, shutdown.
 * Trade-off: the server holds almost no state of its own (SQLite is the truth for jobs), so
 * a crash loses nothing but in-flight HTTP requests and running workers, which are re-queued.
 */
#ifndef SRV_H
#define SRV_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "api.h"
#include "store.h"

/* ------------------------------------------------------------------ config ---- */
typedef enum { SRV_LOG_DEBUG = 0, SRV_LOG_INFO = 1, SRV_LOG_WARN = 2, SRV_LOG_ERROR = 3 } srv_log_level;

typedef struct srv_config {
  char listen[256];          /* HOST:PORT or [V6]:PORT */
  char data[1024];           /* data directory */
  uint32_t workers;          /* concurrent worker processes (0 in the table = cores) */
  uint32_t threads;          /* HTTP threads (0 in the table = cores) */
  char tokens[1024];         /* tokens file, "" = none (loopback only) */
  char mopt[1024];           /* worker binary, "" = <dir of moptd>/mopt */
  char config[1024];         /* config file that was read, "" = none */
  uint64_t max_model_bytes;
  uint64_t max_json_bytes;
  uint32_t max_queued_jobs;
  uint32_t job_timeout_s;
  uint32_t job_memory_mb;
  uint32_t conn_limit;
  uint32_t per_ip_limit;
  uint32_t conn_timeout_s;
  uint32_t max_wait_s;
  uint32_t retry_after_s;
  uint32_t drain_timeout_s;
  uint32_t log_level;        /* srv_log_level */
  uint32_t ota_manifest_ttl_s;
  uint32_t ota_wait_s;
} srv_config;

/* Environment lookup used by srv_config_load (getenv-compatible; tests inject their own). */
typedef const char *(*srv_getenv_fn)(const char *name);

/* Loads cfg: table defaults, then the config file (--config FILE or MOPTD_CONFIG), then the
 * environment (MOPTD_*), then argv flags (--name VALUE, --name=VALUE; '-' and '_' are
 * interchangeable in names). getenv_fn NULL = getenv. Resolves "0 = cores" defaults with
 * ncores. Returns 0 when the daemon should run, 1 when --help was printed to out (exit 0), 2 on
 * a bad option (err names the option, its source and the bound; exit 2). Not thread-safe. */
int srv_config_load(srv_config *cfg, int argc, char **argv, srv_getenv_fn getenv_fn,
                    uint32_t ncores, FILE *out, char *err, size_t errn);
/* Prints the option table (flag, env var, type, bounds, default, help) to out. */
void srv_config_help(FILE *out);
/* Number of options in the table and the i-th option's flag name (for tests). */
size_t srv_config_option_count(void);
const char *srv_config_option_name(size_t i);
/* Splits cfg->listen into host and port. 0 or MOPT_EINVAL. */
int srv_listen_split(const char *listen, char *host, size_t hostn, uint16_t *port);
/* 1 when host is a loopback name or address (localhost, 127.0.0.0/8, ::1). */
int srv_host_is_loopback(const char *host);
/* The start-up policy: without a tokens file only loopback may be used. 0 or 2 with err. */
int srv_config_check(const srv_config *cfg, char *err, size_t errn);

/* --------------------------------------------------------------------- log ---- */
/* A JSON object being built in a caller-owned buffer (truncates safely, always valid JSON
 * when it fits; the line is dropped to a short marker when it does not). */
typedef struct srv_jbuf {
  char *buf;
  size_t cap, len;
  int first;
  int overflow;
} srv_jbuf;
void srv_jbuf_init(srv_jbuf *j, char *buf, size_t cap);   /* writes "{" */
void srv_jbuf_str(srv_jbuf *j, const char *key, const char *val);   /* NULL val → null */
void srv_jbuf_strn(srv_jbuf *j, const char *key, const char *val, size_t n);
void srv_jbuf_int(srv_jbuf *j, const char *key, int64_t v);
void srv_jbuf_num(srv_jbuf *j, const char *key, double v);
void srv_jbuf_raw(srv_jbuf *j, const char *key, const char *json);   /* already JSON */
/* Closes with "}\n"; returns the length (0 on overflow). */
size_t srv_jbuf_end(srv_jbuf *j);
/* Escapes s (n bytes) as a JSON string body into out (cap bytes incl. NUL); returns the
 * length written or (size_t)-1 if it did not fit. Invalid UTF-8 bytes become \u00XX. */
size_t srv_json_escape(const char *s, size_t n, char *out, size_t cap);
/* Replaces every byte that is not part of valid UTF-8 in the NUL-terminated s by '?', in place
 * (a tail cut mid-character stays usable as a JSON string). Returns strlen(s). */
size_t srv_utf8_sanitize(char *s);
/* RFC 3339 UTC with milliseconds: "2026-11-27T23:10:00.123Z" (buf >= 25 bytes). */
void srv_time_rfc3339(int64_t unix_ms, char *buf, size_t n);
int64_t srv_now_ms(void);       /* wall clock, unix ms */
int64_t srv_mono_us(void);      /* monotonic µs */

void srv_log_set_level(int level);
int srv_log_enabled(int level);
/* Starts a log line: {"ts":…,"level":…,"event":event,… — add fields, then srv_log_emit. */
void srv_log_begin(srv_jbuf *j, char *buf, size_t cap, int level, const char *event);
void srv_log_emit(srv_jbuf *j);
/* One-shot line with a formatted "message" field. */
void srv_log_msg(int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ----------------------------------------------------------------- metrics ---- */
/* Lock-free request counters by route (index into api_routes, or api_routes_count for
 * "unmatched") and status; latency histogram per route with Prometheus-style buckets. */
void srv_metrics_init(void);
void srv_metrics_request(size_t route_index, int status, int64_t duration_us);
void srv_metrics_inflight(int delta);
int64_t srv_metrics_inflight_get(void);
/* Scheduler gauges, set by sched.c (and the queue depth by the metrics hook at scrape time);
 * UINT64_MAX leaves a gauge as it is. */
void srv_metrics_sched(uint64_t queued, uint64_t running, uint64_t limit);
void srv_metrics_job_event(const char *kind);   /* "started","succeeded","failed","cancelled","requeued" */
/* Appends the server's metrics in Prometheus text format to *text (malloc'd, *len bytes; *text
 * may be NULL). Metric names: moptd_http_requests_total{route,code},
 * moptd_http_request_duration_seconds{route} (histogram), moptd_http_requests_in_flight,
 * moptd_scheduler_queue_depth, moptd_workers_running, moptd_workers_limit,
 * moptd_worker_events_total{event}. 0 or MOPT_ENOMEM. Thread-safe. */
int srv_metrics_render(char **text, size_t *len);

/* ----------------------------------------------------------------- waiters ---- */
/* A suspended long-poll request. Owned by the HTTP adapter; the registry only links it. */
typedef struct srv_waiter {
  char job[40];
  int64_t deadline_ms;               /* unix ms */
  int state;                         /* private to waiters.c */
  int fired;
  void (*resume)(struct srv_waiter *w);   /* called once, outside the registry lock */
  void *ctx;
  struct srv_waiter *prev, *next;
} srv_waiter;

void srv_waiters_init(void);
/* Registers w before the caller suspends its request (state pending). */
void srv_waiters_add(srv_waiter *w);
/* After suspending: returns 1 when a notification already arrived (w is unlinked and the caller
 * must resume itself), 0 when w is now armed and will get exactly one resume call. */
int srv_waiters_arm(srv_waiter *w);
/* Unlinks w if still linked (pending only). */
void srv_waiters_remove(srv_waiter *w);
/* Wakes every waiter of job_id. Thread-safe, never blocks on I/O. */
void srv_waiters_notify(const char *job_id);
/* Wakes waiters whose deadline is <= now_ms (now_ms < 0: every waiter). */
void srv_waiters_expire(int64_t now_ms);
size_t srv_waiters_count(void);

/* --------------------------------------------------------------- scheduler ---- */
typedef struct srv_sched srv_sched;

/* Starts the loop thread. ctx (api context, store) must outlive the scheduler. */
int srv_sched_start(const srv_config *cfg, api_ctx *ctx, srv_sched **out);
/* Thread-safe wake-ups (uv_async_send underneath). */
void srv_sched_submitted(srv_sched *s);
void srv_sched_cancel(srv_sched *s, const char *job_id);
/* Stops claiming, SIGTERMs running workers and re-queues their jobs, waits for the loop thread
 * to finish (about 2 s at most plus recording outcomes). Afterwards the wake-up calls above are
 * harmless no-ops, so HTTP requests still in flight may keep calling them. Call once, from one
 * thread. NULL is a no-op. */
void srv_sched_stop(srv_sched *s);
/* srv_sched_stop if not done yet, then frees s. NULL is a no-op. */
void srv_sched_destroy(srv_sched *s);
/* The exec helper: `moptd --exec-worker <daemon-pid> <binary> args…` sets PR_SET_PDEATHSIG
 * (SIGKILL) and execs binary, so workers never outlive a kill -9'd daemon (libuv has no
 * pre-exec hook). main() calls this when argv[1] is the flag. Returns only on failure: 3 when
 * the daemon is already gone, 127 when binary cannot be executed. */
#define SRV_EXEC_WORKER_FLAG "--exec-worker"
int srv_exec_worker(int argc, char **argv);

/* -------------------------------------------------------------------- http ---- */
typedef struct srv_http srv_http;

/* Starts libmicrohttpd on cfg->listen. *port receives the bound port. */
int srv_http_start(const srv_config *cfg, api_ctx *ctx, srv_http **out, uint16_t *port,
                   char *err, size_t errn);
/* Stops accepting new connections (the listen socket is closed). */
void srv_http_quiesce(srv_http *h);
/* Waits until no request is in flight or timeout_ms passes; returns the number still open. */
int64_t srv_http_drain(srv_http *h, int64_t timeout_ms);
/* Closes every connection and frees h. NULL is a no-op. */
void srv_http_stop(srv_http *h);

/* -------------------------------------------------------- request helpers ---- */
/* Percent-decodes a path or query string in place (the adapter's unescaper); "%00" and
 * malformed escapes are left as they are, '+' stays '+'. Returns the new length. */
size_t srv_http_unescape(char *s);
/* Request id: 16 lowercase hex chars, unique within the process. */
void srv_request_id(char out[17]);
/* 1 when an incoming X-Request-Id may be echoed (1..64 chars of [A-Za-z0-9._-]). */
int srv_request_id_ok(const char *s);

#endif
