/* metrics.c — the server's Prometheus metrics: requests by route and status code, a latency
 * histogram per route, in-flight requests, and the scheduler's gauges.
 *
 * Counters are relaxed atomics in arrays indexed by route and by a small status table, so
 * recording a request costs a few uncontended atomic adds and no lock. Trade-off: the status
 * table is fixed (unlisted codes are counted under their class, e.g. "5xx"), and a scrape sees
 * counters that may be a few increments apart from each other.
 */
#include "srv.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const int status_table[] = {200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403,
                                   404, 405, 408, 409, 411, 412, 413, 415, 416, 422, 429,
                                   500, 501, 503, 504};
#define N_STATUS (sizeof status_table / sizeof status_table[0])
/* Extra slots: 1xx, 2xx, 3xx, 4xx, 5xx for codes outside the table. */
#define N_SLOTS (N_STATUS + 5)

static const double bucket_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
#define N_BUCKETS (sizeof bucket_le / sizeof bucket_le[0])

typedef struct route_stats {
  atomic_uint_fast64_t by_status[N_SLOTS];
  atomic_uint_fast64_t buckets[N_BUCKETS + 1];   /* last = +Inf only (non-cumulative) */
  atomic_uint_fast64_t sum_us;
  atomic_uint_fast64_t count;
} route_stats;

static route_stats *stats;   /* api_routes_count + 1 entries, last = unmatched */
static size_t n_stats;
static atomic_int_fast64_t inflight;
static atomic_uint_fast64_t g_queued, g_running, g_limit;

static const char *const job_events[] = {"started", "succeeded", "failed", "cancelled",
                                         "requeued"};
#define N_JOB_EVENTS (sizeof job_events / sizeof job_events[0])
static atomic_uint_fast64_t job_event_count[N_JOB_EVENTS];

void srv_metrics_init(void) {
  if (stats) return;
  n_stats = api_routes_count + 1;
  stats = calloc(n_stats, sizeof *stats);
}

static size_t status_slot(int status) {
  for (size_t i = 0; i < N_STATUS; i++)
    if (status_table[i] == status) return i;
  int cls = status / 100;
  if (cls < 1) cls = 5;
  if (cls > 5) cls = 5;
  return N_STATUS + (size_t)(cls - 1);
}

static void status_label(size_t slot, char *buf, size_t n) {
  if (slot < N_STATUS) snprintf(buf, n, "%d", status_table[slot]);
  else snprintf(buf, n, "%dxx", (int)(slot - N_STATUS + 1));
}

void srv_metrics_request(size_t route_index, int status, int64_t duration_us) {
  if (!stats) return;
  if (route_index >= n_stats) route_index = n_stats - 1;
  route_stats *r = &stats[route_index];
  if (duration_us < 0) duration_us = 0;
  atomic_fetch_add_explicit(&r->by_status[status_slot(status)], 1, memory_order_relaxed);
  double secs = (double)duration_us / 1e6;
  size_t b = 0;
  while (b < N_BUCKETS && secs > bucket_le[b]) b++;
  atomic_fetch_add_explicit(&r->buckets[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&r->sum_us, (uint64_t)duration_us, memory_order_relaxed);
  atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
}

void srv_metrics_inflight(int delta) {
  atomic_fetch_add_explicit(&inflight, delta, memory_order_relaxed);
}
int64_t srv_metrics_inflight_get(void) { return atomic_load(&inflight); }

void srv_metrics_sched(uint64_t queued, uint64_t running, uint64_t limit) {
  if (queued != UINT64_MAX) atomic_store_explicit(&g_queued, queued, memory_order_relaxed);
  if (running != UINT64_MAX) atomic_store_explicit(&g_running, running, memory_order_relaxed);
  if (limit != UINT64_MAX) atomic_store_explicit(&g_limit, limit, memory_order_relaxed);
}

void srv_metrics_job_event(const char *kind) {
  for (size_t i = 0; i < N_JOB_EVENTS; i++)
    if (strcmp(job_events[i], kind) == 0) {
      atomic_fetch_add_explicit(&job_event_count[i], 1, memory_order_relaxed);
      return;
    }
}

typedef struct growbuf { char *p; size_t len, cap; int oom; } growbuf;

static void gb_printf(growbuf *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gb_printf(growbuf *g, const char *fmt, ...) {
  if (g->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = g->cap - g->len;
    int n = vsnprintf(g->p ? g->p + g->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) { g->oom = 1; return; }
    if ((size_t)n < room) { g->len += (size_t)n; return; }
    size_t ncap = g->cap ? g->cap * 2 : 8192;
    while (ncap - g->len <= (size_t)n) ncap *= 2;
    char *np = realloc(g->p, ncap);
    if (!np) { g->oom = 1; return; }
    g->p = np;
    g->cap = ncap;
  }
}

static const char *route_name(size_t i) {
  if (i < api_routes_count && api_routes[i].name) return api_routes[i].name;
  return "unmatched";
}

int srv_metrics_render(char **text, size_t *len) {
  growbuf g = {0};
  if (*text) {   /* append to the caller's buffer */
    g.p = *text;
    g.len = *len;
    g.cap = *len;   /* room 0: the first append reallocs */
  }
  gb_printf(&g, "# HELP moptd_http_requests_total HTTP requests answered, by route and status "
                "code.\n# TYPE moptd_http_requests_total counter\n");
  for (size_t r = 0; stats && r < n_stats; r++)
    for (size_t s = 0; s < N_SLOTS; s++) {
      uint64_t v = atomic_load_explicit(&stats[r].by_status[s], memory_order_relaxed);
      char code[8];
      if (!v) continue;
      status_label(s, code, sizeof code);
      gb_printf(&g, "moptd_http_requests_total{route=\"%s\",code=\"%s\"} %llu\n",
                route_name(r), code, (unsigned long long)v);
    }
  gb_printf(&g, "# HELP moptd_http_request_duration_seconds Time from request headers to the "
                "last response byte queued, by route.\n"
                "# TYPE moptd_http_request_duration_seconds histogram\n");
  for (size_t r = 0; stats && r < n_stats; r++) {
    uint64_t count = atomic_load_explicit(&stats[r].count, memory_order_relaxed);
    if (!count) continue;
    uint64_t cum = 0;
    for (size_t b = 0; b < N_BUCKETS; b++) {
      cum += atomic_load_explicit(&stats[r].buckets[b], memory_order_relaxed);
      gb_printf(&g, "moptd_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                route_name(r), bucket_le[b], (unsigned long long)cum);
    }
    cum += atomic_load_explicit(&stats[r].buckets[N_BUCKETS], memory_order_relaxed);
    if (cum < count) count = cum;   /* keep +Inf == _count despite racing increments */
    gb_printf(&g, "moptd_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
              route_name(r), (unsigned long long)cum);
    gb_printf(&g, "moptd_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", route_name(r),
              (double)atomic_load_explicit(&stats[r].sum_us, memory_order_relaxed) / 1e6);
    gb_printf(&g, "moptd_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
              route_name(r), (unsigned long long)cum);
  }
  gb_printf(&g, "# HELP moptd_http_requests_in_flight HTTP requests being handled now.\n"
                "# TYPE moptd_http_requests_in_flight gauge\nmoptd_http_requests_in_flight %lld\n",
            (long long)atomic_load(&inflight));
  gb_printf(&g, "# HELP moptd_scheduler_queue_depth Jobs waiting for a worker.\n"
                "# TYPE moptd_scheduler_queue_depth gauge\nmoptd_scheduler_queue_depth %llu\n",
            (unsigned long long)atomic_load(&g_queued));
  gb_printf(&g, "# HELP moptd_workers_running Worker processes running jobs now.\n"
                "# TYPE moptd_workers_running gauge\nmoptd_workers_running %llu\n",
            (unsigned long long)atomic_load(&g_running));
  gb_printf(&g, "# HELP moptd_workers_limit Most worker processes run at once (--workers).\n"
                "# TYPE moptd_workers_limit gauge\nmoptd_workers_limit %llu\n",
            (unsigned long long)atomic_load(&g_limit));
  gb_printf(&g, "# HELP moptd_worker_events_total Worker lifecycle events seen by the "
                "scheduler.\n# TYPE moptd_worker_events_total counter\n");
  for (size_t i = 0; i < N_JOB_EVENTS; i++)
    gb_printf(&g, "moptd_worker_events_total{event=\"%s\"} %llu\n", job_events[i],
              (unsigned long long)atomic_load(&job_event_count[i]));
  *text = g.p;   /* even on failure: the caller's buffer may have moved */
  *len = g.len;
  return g.oom ? MOPT_ENOMEM : 0;
}
