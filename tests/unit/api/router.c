/* router.c — tests for api/routes.c: the route table's invariants, matching with path
 * parameters, HEAD as GET, 404 vs 405 with the Allow list, and traversal strings that must
 * never reach a handler as a parameter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "api.h"

typedef struct found {
  int rc;
  const api_route *r;
  const char *params[API_MAX_PARAMS];
  size_t n;
  char buf[512];
  char allow[128];
} found;

static void find(found *f, api_method m, const char *path) {
  memset(f, 0, sizeof *f);
  f->rc = api_route_find(m, path, &f->r, f->params, &f->n, f->buf, sizeof f->buf, f->allow,
                         sizeof f->allow);
}

static void test_table_invariants(void **state) {
  (void)state;
  assert_int_equal(api_routes_count, 18);   /* 12 daemon routes + 6 OTA routes */
  assert_null(api_routes[api_routes_count].pattern);
  for (size_t i = 0; i < api_routes_count; i++) {
    const api_route *r = &api_routes[i];
    assert_non_null(r->pattern);
    assert_non_null(r->handler);
    assert_non_null(r->name);
    assert_int_equal(r->pattern[0], '/');
    assert_true(r->method != API_HEAD);   /* HEAD is served by GET rows */
    for (size_t k = 0; k < i; k++) {
      assert_false(api_routes[k].method == r->method &&
                   strcmp(api_routes[k].pattern, r->pattern) == 0);
      assert_string_not_equal(api_routes[k].name, r->name);
    }
    /* Bodies only where the contract has them. */
    if (r->body != API_BODY_NONE) assert_true(r->method == API_POST || r->method == API_PUT);
  }
}

static void test_scopes_per_contract(void **state) {
  (void)state;
  struct { api_method m; const char *p; uint32_t scope; } want[] = {
    {API_GET, "/healthz", 0}, {API_GET, "/readyz", 0}, {API_GET, "/metrics", API_SCOPE_READ},
    {API_POST, "/v1/models", API_SCOPE_WRITE}, {API_GET, "/v1/models", API_SCOPE_READ},
    {API_GET, "/v1/models/{id}", API_SCOPE_READ},
    {API_GET, "/v1/models/{id}/content", API_SCOPE_READ},
    {API_DELETE, "/v1/models/{id}", API_SCOPE_WRITE}, {API_POST, "/v1/jobs", API_SCOPE_WRITE},
    {API_GET, "/v1/jobs", API_SCOPE_READ}, {API_GET, "/v1/jobs/{id}", API_SCOPE_READ},
    {API_POST, "/v1/jobs/{id}/cancel", API_SCOPE_WRITE},
    {API_PUT, "/v1/releases/{name}/{channel}", API_SCOPE_WRITE},
    {API_GET, "/v1/releases/{name}/{channel}", API_SCOPE_READ},
    {API_GET, "/v1/ota/{name}/{channel}/manifest", API_SCOPE_OTA},
    {API_GET, "/v1/ota/public-key", 0},
    {API_GET, "/v1/payloads/{id}", API_SCOPE_OTA},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    int seen = 0;
    for (size_t k = 0; k < api_routes_count; k++)
      if (api_routes[k].method == want[i].m && strcmp(api_routes[k].pattern, want[i].p) == 0) {
        assert_int_equal(api_routes[k].scope, want[i].scope);
        seen = 1;
      }
    if (!seen) fail_msg("route %s %s missing", api_method_name(want[i].m), want[i].p);
  }
  for (size_t k = 0; k < api_routes_count; k++)
    if (strcmp(api_routes[k].pattern, "/v1/models") == 0 && api_routes[k].method == API_POST)
      assert_int_equal(api_routes[k].body, API_BODY_BLOB);
    else if (strcmp(api_routes[k].pattern, "/v1/jobs") == 0 && api_routes[k].method == API_POST)
      assert_int_equal(api_routes[k].body, API_BODY_JSON);
}

static void test_matches_and_params(void **state) {
  (void)state;
  found f;
  find(&f, API_GET, "/healthz");
  assert_int_equal(f.rc, 0);
  assert_string_equal(f.r->name, "healthz");
  assert_int_equal(f.n, 0);

  const char *id = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  char path[256];
  snprintf(path, sizeof path, "/v1/models/%s/content", id);
  find(&f, API_GET, path);
  assert_int_equal(f.rc, 0);
  assert_string_equal(f.r->pattern, "/v1/models/{id}/content");
  assert_int_equal(f.n, 1);
  assert_string_equal(f.params[0], id);

  snprintf(path, sizeof path, "/v1/models/%s", id);
  find(&f, API_DELETE, path);
  assert_int_equal(f.rc, 0);
  assert_int_equal(f.r->method, API_DELETE);
  assert_string_equal(f.params[0], id);

  find(&f, API_POST, "/v1/jobs/job_0123456789abcdefghijklmnop/cancel");
  assert_int_equal(f.rc, 0);
  assert_string_equal(f.r->name, "jobs_cancel");
  assert_string_equal(f.params[0], "job_0123456789abcdefghijklmnop");

  find(&f, API_POST, "/v1/models");
  assert_int_equal(f.rc, 0);
  assert_string_equal(f.r->name, "models_upload");
  find(&f, API_GET, "/v1/models");
  assert_int_equal(f.rc, 0);
  assert_string_equal(f.r->name, "models_list");
}

static void test_head_is_get(void **state) {
  (void)state;
  found f;
  find(&f, API_HEAD, "/v1/models/sha256:ab/content");
  assert_int_equal(f.rc, 0);
  assert_int_equal(f.r->method, API_GET);
  assert_string_equal(f.r->name, "models_content");
  find(&f, API_HEAD, "/v1/jobs");
  assert_int_equal(f.rc, 0);
  assert_string_equal(f.r->name, "jobs_list");
  /* HEAD never reaches a POST-only route. */
  find(&f, API_HEAD, "/v1/jobs/job_x/cancel");
  assert_int_equal(f.rc, MOPT_EMETHOD);
  assert_string_equal(f.allow, "POST");
}

static void test_404_and_405(void **state) {
  (void)state;
  found f;
  const char *missing[] = {"/", "", "/nope", "/v1", "/v1/models/", "/v1/models/x/content/more",
                           "/healthz/", "healthz", "/v1/jobs/x/cancel/", "/V1/models",
                           "/v1//models", "/v1/models//content"};
  for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
    find(&f, API_GET, missing[i]);
    if (f.rc != MOPT_ENOTFOUND) fail_msg("%s: rc %d", missing[i], f.rc);
    assert_string_equal(f.allow, "");
  }
  find(&f, API_GET, NULL);
  assert_int_equal(f.rc, MOPT_ENOTFOUND);

  find(&f, API_PUT, "/v1/models");
  assert_int_equal(f.rc, MOPT_EMETHOD);
  assert_string_equal(f.allow, "POST, GET, HEAD");
  find(&f, API_POST, "/v1/models/sha256:ab");
  assert_int_equal(f.rc, MOPT_EMETHOD);
  assert_string_equal(f.allow, "GET, HEAD, DELETE");
  find(&f, API_DELETE, "/healthz");
  assert_int_equal(f.rc, MOPT_EMETHOD);
  assert_string_equal(f.allow, "GET, HEAD");
  find(&f, API_GET, "/v1/jobs/job_x/cancel");
  assert_int_equal(f.rc, MOPT_EMETHOD);
  assert_string_equal(f.allow, "POST");
  find(&f, API_OPTIONS, "/v1/jobs");
  assert_int_equal(f.rc, MOPT_EMETHOD);
  assert_string_equal(f.allow, "POST, GET, HEAD");
  find(&f, API_METHOD_OTHER, "/metrics");
  assert_int_equal(f.rc, MOPT_EMETHOD);
}

static void test_traversal_never_matches(void **state) {
  (void)state;
  const char *bad[] = {
    "/v1/models/..", "/v1/models/../content", "/v1/models/..%2Fetc%2Fpasswd",
    "/v1/models/a%2Fb", "/v1/models/a%2fb/content", "/v1/models/%2e%2e", "/v1/models/a..b",
    "/v1/models/a\\b", "/v1/models/a\x01" "b", "/v1/models/a\x7f", "/v1/jobs/\t/cancel",
    "/v1/models/a%00b", "/v1/jobs/..", "/v1/models/sha256:x\r\nSet-Cookie: y",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    found f;
    find(&f, API_GET, bad[i]);
    if (f.rc != MOPT_ENOTFOUND) fail_msg("%zu: rc %d for a traversal path", i, f.rc);
    find(&f, API_DELETE, bad[i]);
    assert_int_equal(f.rc, MOPT_ENOTFOUND);
  }
  /* A single dot is harmless and allowed. */
  found f;
  find(&f, API_GET, "/v1/models/a.b");
  assert_int_equal(f.rc, 0);
  /* Over-long parameters are refused (no 4 KiB ids). */
  char path[600] = "/v1/models/";
  memset(path + strlen(path), 'a', 300);
  find(&f, API_GET, path);
  assert_int_equal(f.rc, MOPT_ENOTFOUND);
}

static void test_param_buffer_too_small(void **state) {
  (void)state;
  const api_route *r = NULL;
  const char *params[API_MAX_PARAMS];
  size_t n = 0;
  char buf[8];
  int rc = api_route_find(API_GET, "/v1/models/sha256:0123456789", &r, params, &n, buf,
                          sizeof buf, NULL, 0);
  assert_int_equal(rc, MOPT_ENOTFOUND);   /* never a truncated parameter */
}

static void test_method_names(void **state) {
  (void)state;
  const char *names[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
  for (int i = 0; i < 7; i++) {
    api_method m = api_method_parse(names[i]);
    assert_int_equal(m, i);
    assert_string_equal(api_method_name(m), names[i]);
  }
  assert_int_equal(api_method_parse("get"), API_METHOD_OTHER);
  assert_int_equal(api_method_parse("BREW"), API_METHOD_OTHER);
  assert_int_equal(api_method_parse(NULL), API_METHOD_OTHER);
  assert_string_equal(api_method_name((api_method)99), "OTHER");
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_table_invariants),
    cmocka_unit_test(test_scopes_per_contract),
    cmocka_unit_test(test_matches_and_params),
    cmocka_unit_test(test_head_is_get),
    cmocka_unit_test(test_404_and_405),
    cmocka_unit_test(test_traversal_never_matches),
    cmocka_unit_test(test_param_buffer_too_small),
    cmocka_unit_test(test_method_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
