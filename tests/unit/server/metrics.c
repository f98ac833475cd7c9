/* tests/unit/server/metrics.c — request counters, histogram buckets (cumulative, +Inf equals
 * _count), scheduler gauges, appending to an existing buffer, and the text passing
 * `promtool check metrics` (Debian package prometheus) when promtool is installed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "srv.h"

static char *render(size_t *len) {
  char *text = NULL;
  *len = 0;
  assert_int_equal(srv_metrics_render(&text, len), 0);
  assert_non_null(text);
  assert_int_equal(strlen(text), *len);   /* NUL-terminated and no embedded NULs */
  return text;
}

static size_t route_named(const char *name) {
  for (size_t i = 0; i < api_routes_count; i++)
    if (strcmp(api_routes[i].name, name) == 0) return i;
  fail_msg("no route %s", name);
  return 0;
}

static void test_counts_and_histogram(void **state) {
  (void)state;
  srv_metrics_init();
  size_t jg = route_named("jobs_get");
  srv_metrics_request(jg, 200, 300);        /* 0.3 ms  → le=0.0005 */
  srv_metrics_request(jg, 200, 4000);       /* 4 ms    → le=0.005 */
  srv_metrics_request(jg, 304, 20000000);   /* 20 s    → +Inf only */
  srv_metrics_request(api_routes_count, 404, 100);
  srv_metrics_request(jg, 299, 100);        /* not in the status table: counted as 2xx */
  srv_metrics_inflight(3);
  srv_metrics_inflight(-1);
  srv_metrics_sched(7, 2, 4);
  srv_metrics_sched(UINT64_MAX, 3, 4);      /* leaves the queue depth alone */
  srv_metrics_job_event("succeeded");
  srv_metrics_job_event("succeeded");
  srv_metrics_job_event("nonsense");        /* ignored */
  size_t len;
  char *t = render(&len);
  assert_non_null(strstr(t, "moptd_http_requests_total{route=\"jobs_get\",code=\"200\"} 2\n"));
  assert_non_null(strstr(t, "moptd_http_requests_total{route=\"jobs_get\",code=\"304\"} 1\n"));
  assert_non_null(strstr(t, "moptd_http_requests_total{route=\"jobs_get\",code=\"2xx\"} 1\n"));
  assert_non_null(strstr(t, "moptd_http_requests_total{route=\"unmatched\",code=\"404\"} 1\n"));
  assert_non_null(strstr(t, "moptd_http_request_duration_seconds_bucket{route=\"jobs_get\",le=\"0.0005\"} 2\n"));
  assert_non_null(strstr(t, "moptd_http_request_duration_seconds_bucket{route=\"jobs_get\",le=\"0.005\"} 3\n"));
  assert_non_null(strstr(t, "moptd_http_request_duration_seconds_bucket{route=\"jobs_get\",le=\"10\"} 3\n"));
  assert_non_null(strstr(t, "moptd_http_request_duration_seconds_bucket{route=\"jobs_get\",le=\"+Inf\"} 4\n"));
  assert_non_null(strstr(t, "moptd_http_request_duration_seconds_count{route=\"jobs_get\"} 4\n"));
  assert_non_null(strstr(t, "moptd_http_request_duration_seconds_sum{route=\"jobs_get\"} 20.004400\n"));
  assert_non_null(strstr(t, "moptd_http_requests_in_flight 2\n"));
  assert_non_null(strstr(t, "moptd_scheduler_queue_depth 7\n"));
  assert_non_null(strstr(t, "moptd_workers_running 3\n"));
  assert_non_null(strstr(t, "moptd_workers_limit 4\n"));
  assert_non_null(strstr(t, "moptd_worker_events_total{event=\"succeeded\"} 2\n"));
  /* every sample's family has exactly one TYPE line */
  assert_non_null(strstr(t, "# TYPE moptd_http_request_duration_seconds histogram\n"));
  assert_null(strstr(strstr(t, "# TYPE moptd_http_requests_total") + 1,
                     "# TYPE moptd_http_requests_total"));
  free(t);
}

static void test_append(void **state) {
  (void)state;
  const char head[] = "# HELP x_total y\n# TYPE x_total counter\nx_total 1\n";
  size_t len = sizeof head - 1;
  char *text = malloc(len);   /* exactly len bytes, not NUL-terminated */
  memcpy(text, head, len);
  assert_int_equal(srv_metrics_render(&text, &len), 0);
  assert_true(len > sizeof head);
  assert_memory_equal(text, head, sizeof head - 1);
  assert_non_null(strstr(text, "moptd_workers_limit"));
  free(text);
}

static void test_promtool(void **state) {
  (void)state;
  const char *promtool = "/usr/bin/promtool";
  if (access(promtool, X_OK) != 0) skip();
  srv_metrics_request(route_named("healthz"), 200, 50);
  size_t len;
  char *t = render(&len);
  char path[] = "/tmp/moptd-metrics-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, t, len), (ssize_t)len);
  close(fd);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "%s check metrics < %s > %s.out 2>&1", promtool, path, path);
  int rc = system(cmd);
  if (rc != 0) {
    snprintf(cmd, sizeof cmd, "cat %s.out >&2", path);
    if (system(cmd) != 0) {}
  }
  snprintf(cmd, sizeof cmd, "%s.out", path);
  unlink(cmd);
  unlink(path);
  free(t);
  assert_int_equal(rc, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_counts_and_histogram),
    cmocka_unit_test(test_append),
    cmocka_unit_test(test_promtool),
  };
  return cmocka_run_group_tests_name("server/metrics", tests, NULL, NULL);
}
