/* auth.c — tests for api/auth.c: tokens file parsing (hashes, scopes, comments, errors with
 * file:line), bearer checks, admin implying every scope, and api_authorize's 401/403 split. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"

static char path[64];

static void write_file(const char *text) {
  snprintf(path, sizeof path, "/tmp/moptd-auth-test.XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
}

static api_auth *load_tokens(void) {
  char hr[65], hw[65], ha[65], hrw[65], ho[65];
  store_token_hash("reader-token", hr);
  store_token_hash("writer-token", hw);
  store_token_hash("admin-token", ha);
  store_token_hash("both-token", hrw);
  store_token_hash("ota-token", ho);
  for (char *p = hw; *p; p++)   /* uppercase hex is accepted */
    if (*p >= 'a' && *p <= 'f') *p = (char)(*p - 'a' + 'A');
  char text[1024];
  snprintf(text, sizeof text,
           "# moptd tokens\n\n"
           "read %s dashboard\n"
           "write\t%s  ci uploader # trailing comment\n"
           "admin %s\n"
           "read,write %s platform\n"
           "   ota %s\r\n",
           hr, hw, ha, hrw, ho);
  write_file(text);
  api_auth *a = NULL;
  mopt_diag d = {0};
  int rc = api_auth_load(path, &a, &d);
  unlink(path);
  if (rc) fail_msg("load: %s at %s", d.msg, d.where);
  return a;
}

static void test_scopes_from_file(void **state) {
  (void)state;
  api_auth *a = load_tokens();
  uint32_t s = 0;
  assert_int_equal(api_auth_check(a, "Bearer reader-token", &s), 0);
  assert_int_equal(s, API_SCOPE_READ);
  assert_int_equal(api_auth_check(a, "Bearer writer-token", &s), 0);
  assert_int_equal(s, API_SCOPE_WRITE);
  assert_int_equal(api_auth_check(a, "bearer both-token", &s), 0);
  assert_int_equal(s, API_SCOPE_READ | API_SCOPE_WRITE);
  assert_int_equal(api_auth_check(a, "Bearer ota-token", &s), 0);
  assert_int_equal(s, API_SCOPE_OTA);
  assert_int_equal(api_auth_check(a, "Bearer admin-token", &s), 0);
  assert_int_equal(s, API_SCOPE_READ | API_SCOPE_WRITE | API_SCOPE_ADMIN | API_SCOPE_OTA);
  api_auth_destroy(a);
}

static void test_bad_tokens(void **state) {
  (void)state;
  api_auth *a = load_tokens();
  uint32_t s = 123;
  const char *bad[] = {NULL, "", "Bearer", "Bearer ", "Bearer reader-token2",
                       "Bearer reader-toke", "Basic cmVhZGVyLXRva2Vu", "reader-token",
                       "Token reader-token", "Bearer READER-TOKEN"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(api_auth_check(a, bad[i], &s), MOPT_EAUTH);
    assert_int_equal(s, 0);
  }
  /* The file holds hashes: presenting the hash itself is not the token. */
  char h[65];
  store_token_hash("reader-token", h);
  char hdr[100];
  snprintf(hdr, sizeof hdr, "Bearer %s", h);
  assert_int_equal(api_auth_check(a, hdr, &s), MOPT_EAUTH);
  /* Very long tokens are refused, not overflowed. */
  char *lng = malloc(10000);
  memcpy(lng, "Bearer ", 7);
  memset(lng + 7, 'x', 9990);
  lng[9997] = 0;
  assert_int_equal(api_auth_check(a, lng, &s), MOPT_EAUTH);
  free(lng);
  api_auth_destroy(a);
}

static void test_authorize(void **state) {
  (void)state;
  api_auth *a = load_tokens();
  api_ctx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.auth = a;
  api_route read_route = {API_GET, "/v1/models", NULL, API_SCOPE_READ, API_BODY_NONE, 0, "r"};
  api_route write_route = {API_POST, "/v1/jobs", NULL, API_SCOPE_WRITE, API_BODY_JSON, 0, "w"};
  api_route public_route = {API_GET, "/healthz", NULL, 0, API_BODY_NONE, 0, "p"};
  uint32_t s;
  assert_int_equal(api_authorize(&ctx, &read_route, NULL, &s), MOPT_EAUTH);
  assert_int_equal(api_authorize(&ctx, &read_route, "Bearer nope", &s), MOPT_EAUTH);
  assert_int_equal(api_authorize(&ctx, &read_route, "Bearer writer-token", &s), MOPT_EFORBIDDEN);
  assert_int_equal(api_authorize(&ctx, &read_route, "Bearer reader-token", &s), 0);
  assert_int_equal(api_authorize(&ctx, &write_route, "Bearer reader-token", &s), MOPT_EFORBIDDEN);
  assert_int_equal(api_authorize(&ctx, &write_route, "Bearer ota-token", &s), MOPT_EFORBIDDEN);
  assert_int_equal(api_authorize(&ctx, &write_route, "Bearer both-token", &s), 0);
  assert_int_equal(api_authorize(&ctx, &write_route, "Bearer admin-token", &s), 0);
  assert_int_equal(api_authorize(&ctx, &read_route, "Bearer admin-token", &s), 0);
  assert_int_equal(api_authorize(&ctx, &public_route, NULL, &s), 0);
  assert_int_equal(s, 0);
  assert_int_equal(api_authorize(&ctx, &public_route, "Bearer junk", &s), 0);
  /* Without a tokens file every caller has every scope. */
  ctx.auth = NULL;
  assert_int_equal(api_authorize(&ctx, &write_route, NULL, &s), 0);
  assert_true(s & API_SCOPE_WRITE);
  assert_true(s & API_SCOPE_ADMIN);
  api_auth_destroy(a);
}

static void test_bad_files(void **state) {
  (void)state;
  char h[65];
  store_token_hash("t", h);
  struct { const char *fmt; int line; } cases[] = {
    {"read %s\nsuperuser %s\n", 2},
    {"read %s\nread\n", 2},
    {"# x\nread deadbeef\n", 2},
    {"read,,write %s\n", 0},   /* empty element is skipped: still valid */
    {"read %sff\n", 1},
    {"read,bogus %s\n", 1},
    {"%s read\n", 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[512];
    snprintf(text, sizeof text, cases[i].fmt, h, h);
    write_file(text);
    api_auth *a = (api_auth *)1;
    mopt_diag d = {0};
    int rc = api_auth_load(path, &a, &d);
    unlink(path);
    if (cases[i].line == 0) {
      assert_int_equal(rc, 0);
      api_auth_destroy(a);
      continue;
    }
    if (rc == 0) fail_msg("case %zu loaded", i);
    assert_null(a);
    char want[96];
    snprintf(want, sizeof want, "%s:%d", path, cases[i].line);
    assert_string_equal(d.where, want);
    assert_true(strlen(d.msg) > 0);
  }
  api_auth *a = (api_auth *)1;
  mopt_diag d = {0};
  assert_int_equal(api_auth_load("/nonexistent/moptd/tokens", &a, &d), MOPT_EIO);
  assert_null(a);
  api_auth_destroy(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_scopes_from_file),
    cmocka_unit_test(test_bad_tokens),
    cmocka_unit_test(test_authorize),
    cmocka_unit_test(test_bad_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
