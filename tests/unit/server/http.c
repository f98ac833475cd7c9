/* tests/unit/server/http.c — the adapter's percent-decoding of paths and query values:
 * ordinary escapes decode, "%00" and malformed escapes stay literal (so a NUL can never cut a
 * name or id short), '+' is not a space. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "srv.h"

static void check(const char *in, const char *want) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", in);
  size_t n = srv_http_unescape(buf);
  assert_string_equal(buf, want);
  assert_int_equal(n, strlen(want));
}

static void test_decodes(void **state) {
  (void)state;
  check("/v1/models/sha256%3Aab", "/v1/models/sha256:ab");
  check("a%20b%2fc%2Fd", "a b/c/d");
  check("%41%42%43", "ABC");
  check("%e2%82%ac", "\xe2\x82\xac");
  check("plain", "plain");
  check("", "");
}

static void test_keeps_nul_and_malformed(void **state) {
  (void)state;
  check("nul%00byte", "nul%00byte");
  check("%", "%");
  check("50%", "50%");
  check("%4", "%4");
  check("%zz%4g", "%zz%4g");
  check("a+b", "a+b");
  check("%%41", "%A");
  check("%2e%2e/x", "../x");   /* decoded; the router refuses ".." segments */
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_decodes),
    cmocka_unit_test(test_keeps_nul_and_malformed),
  };
  return cmocka_run_group_tests_name("server/http", tests, NULL, NULL);
}
