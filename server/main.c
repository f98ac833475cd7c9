/* main.c — moptd start-up, signal handling and orderly shutdown.
 *
 * Start: config (exit 2 on a bad value), open files limit raised to its hard maximum, store
 * opened (migrations, tmp sweep, jobs left running re-queued), tokens loaded, scheduler loop
 * started, HTTP started, then the "listening" line. Signals are blocked in every thread and
 * taken synchronously here with sigwait, so no handler code runs in async-signal context.
 * Shutdown on SIGTERM/SIGINT: /readyz turns not-ready, the listen socket closes, in-flight
 * requests finish (up to drain_timeout_s), then running workers are stopped and their jobs
 * re-queued, and the process exits 0. Trade-off: idle keep-alive connections are closed
 * without waiting, since nothing is in flight on them.
 */
#include "mopt.h"
#include "srv.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static atomic_int ready;
static srv_sched *g_sched;
static store *g_store;

static void hook_submitted(void *h) { (void)h; srv_sched_submitted(g_sched); }
static void hook_cancel(void *h, const char *job) { (void)h; srv_sched_cancel(g_sched, job); }
static void hook_changed(void *h, const char *job) { (void)h; srv_waiters_notify(job); }
static int hook_metrics(void *h, char **text, size_t *len) {
  (void)h;
  /* The queue depth is read at scrape time so it agrees with moptd_jobs{state="queued"}. */
  uint64_t counts[5] = {0};
  store_conn *c = g_store ? store_conn_get(g_store) : NULL;
  if (c && store_job_counts(c, counts) == 0)
    srv_metrics_sched(counts[STORE_JOB_QUEUED], UINT64_MAX, UINT64_MAX);
  return srv_metrics_render(text, len);
}
static int hook_ready(void *h) { (void)h; return atomic_load(&ready); }

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur != rl.rlim_max) {
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      srv_log_msg(SRV_LOG_WARN, "startup", "cannot raise the open-files limit from %llu",
                  (unsigned long long)old);
  }
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], SRV_EXEC_WORKER_FLAG) == 0) return srv_exec_worker(argc, argv);
  srv_config cfg;
  char err[1024] = "";
  long nc = sysconf(_SC_NPROCESSORS_ONLN);
  int rc = srv_config_load(&cfg, argc, argv, NULL, nc > 0 ? (uint32_t)nc : 1, stdout, err,
                           sizeof err);
  if (rc == 1) return 0;
  if (rc == 0) rc = srv_config_check(&cfg, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "moptd: %s\n", err);
    srv_log_msg(SRV_LOG_ERROR, "config_error", "%s", err);
    return 2;
  }
  srv_log_set_level((int)cfg.log_level);

  /* Every thread created from here on inherits this mask; signals arrive only at sigwait. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  raise_nofile();

  store *st = NULL;
  uint32_t requeued = 0;
  mopt_diag d;
  memset(&d, 0, sizeof d);
  int e = store_open(cfg.data, &st, &requeued, &d);
  if (e != 0) {
    srv_log_msg(SRV_LOG_ERROR, "startup", "cannot open the data directory '%s': %s%s%s",
                cfg.data, d.msg[0] ? d.msg : mopt_strerror(e), d.where[0] ? " at " : "",
                d.where);
    fprintf(stderr, "moptd: cannot open data directory '%s': %s\n", cfg.data,
            d.msg[0] ? d.msg : mopt_strerror(e));
    return 1;
  }
  if (requeued)
    srv_log_msg(SRV_LOG_INFO, "recovery", "re-queued %u job(s) left running by a previous run",
                requeued);

  api_auth *auth = NULL;
  if (cfg.tokens[0]) {
    memset(&d, 0, sizeof d);
    e = api_auth_load(cfg.tokens, &auth, &d);
    if (e != 0) {
      fprintf(stderr, "moptd: --tokens %s: %s%s%s\n", cfg.tokens,
              d.msg[0] ? d.msg : mopt_strerror(e), d.where[0] ? " at " : "", d.where);
      srv_log_msg(SRV_LOG_ERROR, "config_error", "--tokens %s: %s", cfg.tokens,
                  d.msg[0] ? d.msg : mopt_strerror(e));
      store_close(st);
      return 2;
    }
  }

  g_store = st;
  api_ctx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.st = st;
  ctx.auth = auth;
  ctx.limits.max_model_bytes = cfg.max_model_bytes;
  ctx.limits.max_json_bytes = cfg.max_json_bytes;
  ctx.limits.max_queued_jobs = cfg.max_queued_jobs;
  ctx.limits.max_wait_s = cfg.max_wait_s;
  ctx.limits.retry_after_s = cfg.retry_after_s;
  ctx.limits.ota_manifest_ttl_s = cfg.ota_manifest_ttl_s;
  ctx.limits.ota_wait_s = cfg.ota_wait_s;
  ctx.hooks.jobs_submitted = hook_submitted;
  ctx.hooks.job_cancel = hook_cancel;
  ctx.hooks.job_changed = hook_changed;
  ctx.hooks.metrics = hook_metrics;
  ctx.hooks.ready = hook_ready;
  ctx.hooks.hctx = NULL;

  memset(&d, 0, sizeof d);
  e = api_ota_init(&ctx, &d);   /* OTA signing key: created on first start in the data dir */
  if (e != 0) {
    srv_log_msg(SRV_LOG_ERROR, "startup", "OTA signing key: %s%s%s",
                d.msg[0] ? d.msg : mopt_strerror(e), d.where[0] ? " at " : "", d.where);
    store_close(st);
    api_auth_destroy(auth);
    return 1;
  }

  srv_metrics_init();
  srv_waiters_init();
  if (srv_sched_start(&cfg, &ctx, &g_sched) != 0) {
    srv_log_msg(SRV_LOG_ERROR, "startup", "cannot start the job scheduler");
    store_close(st);
    return 1;
  }
  srv_http *http = NULL;
  uint16_t port = 0;
  e = srv_http_start(&cfg, &ctx, &http, &port, err, sizeof err);
  if (e != 0) {
    srv_log_msg(SRV_LOG_ERROR, "startup", "%s", err);
    fprintf(stderr, "moptd: %s\n", err);
    srv_sched_destroy(g_sched);
    store_close(st);
    return 1;
  }
  atomic_store(&ready, 1);
  {
    char host[256], addr[300], buf[1024];
    uint16_t p0;
    srv_listen_split(cfg.listen, host, sizeof host, &p0);
    if (strchr(host, ':')) snprintf(addr, sizeof addr, "[%s]:%u", host, port);
    else snprintf(addr, sizeof addr, "%s:%u", host, port);
    /* "event" and "addr" first, as contracts.md shows the line. */
    srv_jbuf j;
    srv_jbuf_init(&j, buf, sizeof buf);
    srv_jbuf_str(&j, "event", "listening");
    srv_jbuf_str(&j, "addr", addr);
    char ts[32];
    srv_time_rfc3339(srv_now_ms(), ts, sizeof ts);
    srv_jbuf_str(&j, "ts", ts);
    srv_jbuf_str(&j, "level", "info");
    srv_jbuf_int(&j, "port", port);
    srv_jbuf_int(&j, "pid", (int64_t)getpid());
    srv_jbuf_str(&j, "data", cfg.data);
    srv_jbuf_int(&j, "workers", cfg.workers);
    srv_jbuf_int(&j, "threads", cfg.threads);
    srv_jbuf_str(&j, "auth", auth ? "tokens" : "none (loopback only)");
    srv_jbuf_str(&j, "version", MOPT_VERSION);
    srv_log_emit(&j);
  }

  int sig = 0;
  for (;;) {
    if (sigwait(&sigs, &sig) != 0) continue;
    if (sig == SIGHUP) {
      srv_log_msg(SRV_LOG_INFO, "signal", "SIGHUP ignored (restart to reload the config)");
      continue;
    }
    break;
  }
  srv_log_msg(SRV_LOG_INFO, "shutdown", "received %s: draining", sig == SIGINT ? "SIGINT" : "SIGTERM");
  atomic_store(&ready, 0);
  srv_http_quiesce(http);
  srv_sched_stop(g_sched);   /* workers stop now; their jobs go back to the queue */
  int64_t left = srv_http_drain(http, (int64_t)cfg.drain_timeout_s * 1000);
  if (left > 0)
    srv_log_msg(SRV_LOG_WARN, "shutdown", "%lld request(s) still in flight after %u s; closing",
                (long long)left, cfg.drain_timeout_s);
  srv_http_stop(http);
  srv_sched_destroy(g_sched);
  g_sched = NULL;
  store_close(st);
  api_auth_destroy(auth);
  srv_log_msg(SRV_LOG_INFO, "stopped", "moptd stopped");
  return 0;
}
