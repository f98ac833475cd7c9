/* tests/unit/server/log.c — JSON log-line building (escaping, truncation), RFC 3339 times,
 * request ids. Lines are checked byte for byte and re-parsed with jansson. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <string.h>

#include "srv.h"

static void test_escape(void **state) {
  (void)state;
  char out[128];
  assert_int_equal(srv_json_escape("plain", 5, out, sizeof out), 5);
  assert_string_equal(out, "plain");
  const char in[] = "q\"b\\n\nt\tc\x01";
  size_t n = srv_json_escape(in, sizeof in - 1, out, sizeof out);
  assert_string_equal(out, "q\\\"b\\\\n\\nt\\tc\\u0001");
  assert_int_equal(n, strlen(out));
  /* valid UTF-8 passes through, invalid bytes are escaped so the line stays valid JSON */
  assert_int_equal(srv_json_escape("h\xc3\xa9", 3, out, sizeof out), 3);
  assert_string_equal(out, "h\xc3\xa9");
  srv_json_escape("\xff\xc3", 2, out, sizeof out);
  assert_string_equal(out, "\\u00ff\\u00c3");
  srv_json_escape("\xed\xa0\x80", 3, out, sizeof out);   /* UTF-16 surrogate: invalid */
  assert_string_equal(out, "\\u00ed\\u00a0\\u0080");
  /* too small: reports failure instead of truncating mid-escape */
  char tiny[4];
  assert_true(srv_json_escape("abcdef", 6, tiny, sizeof tiny) == (size_t)-1);
  assert_true(srv_json_escape("\"", 1, tiny, 2) == (size_t)-1);
}

static void test_utf8_sanitize(void **state) {
  (void)state;
  char a[] = "ok \xc3\xa9 \xe2\x82";   /* é, then a euro sign cut after two bytes */
  assert_int_equal(srv_utf8_sanitize(a), 8);
  assert_string_equal(a, "ok \xc3\xa9 ??");
  char b[] = "\xa9tail";                 /* continuation byte at the start of a ring tail */
  srv_utf8_sanitize(b);
  assert_string_equal(b, "?tail");
  json_t *v = json_string(a);
  assert_non_null(v);                     /* jansson accepts it now */
  json_decref(v);
}

static void test_jbuf_line(void **state) {
  (void)state;
  char buf[256];
  srv_jbuf j;
  srv_jbuf_init(&j, buf, sizeof buf);
  srv_jbuf_str(&j, "event", "request");
  srv_jbuf_int(&j, "status", 404);
  srv_jbuf_num(&j, "duration_ms", 1.25);
  srv_jbuf_str(&j, "path", "/v1/\"x\"");
  srv_jbuf_str(&j, "none", NULL);
  srv_jbuf_raw(&j, "obj", "{\"a\":1}");
  size_t n = srv_jbuf_end(&j);
  assert_int_equal(n, strlen(buf));
  assert_string_equal(buf, "{\"event\":\"request\",\"status\":404,\"duration_ms\":1.250,"
                           "\"path\":\"/v1/\\\"x\\\"\",\"none\":null,\"obj\":{\"a\":1}}\n");
  json_error_t je;
  json_t *v = json_loads(buf, 0, &je);
  assert_non_null(v);
  assert_string_equal(json_string_value(json_object_get(v, "path")), "/v1/\"x\"");
  json_decref(v);
}

static void test_jbuf_overflow(void **state) {
  (void)state;
  char buf[32];
  srv_jbuf j;
  srv_jbuf_init(&j, buf, sizeof buf);
  srv_jbuf_str(&j, "a", "0123456789");
  srv_jbuf_str(&j, "b", "0123456789abcdefghij");   /* does not fit */
  srv_jbuf_int(&j, "c", 1);
  assert_int_equal(srv_jbuf_end(&j), 0);
  /* exactly fitting lines work: {"k":"v"}\n = 10 bytes + NUL */
  char b2[12];
  srv_jbuf_init(&j, b2, sizeof b2);
  srv_jbuf_str(&j, "k", "v");
  assert_int_equal(srv_jbuf_end(&j), 10);
  assert_string_equal(b2, "{\"k\":\"v\"}\n");
}

static void test_rfc3339(void **state) {
  (void)state;
  char buf[32];
  srv_time_rfc3339(0, buf, sizeof buf);
  assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
  srv_time_rfc3339(1795821000123LL, buf, sizeof buf);   /* 2026-11-27T23:10:00.123Z */
  assert_string_equal(buf, "2026-11-27T23:10:00.123Z");
  srv_time_rfc3339(951782400999LL, buf, sizeof buf);    /* leap day 2000 */
  assert_string_equal(buf, "2000-02-29T00:00:00.999Z");
  int64_t now = srv_now_ms();
  assert_true(now > 1700000000000LL);
  int64_t a = srv_mono_us(), b = srv_mono_us();
  assert_true(b >= a);
}

static void test_request_ids(void **state) {
  (void)state;
  char a[17], b[17];
  srv_request_id(a);
  srv_request_id(b);
  assert_int_equal(strlen(a), 16);
  assert_string_not_equal(a, b);
  for (int i = 0; i < 16; i++) assert_non_null(strchr("0123456789abcdef", a[i]));
  assert_true(srv_request_id_ok(a));
  assert_true(srv_request_id_ok("client-id_1.2"));
  assert_false(srv_request_id_ok(""));
  assert_false(srv_request_id_ok(NULL));
  assert_false(srv_request_id_ok("has space"));
  assert_false(srv_request_id_ok("quote\"inject"));
  assert_false(srv_request_id_ok("a\r\nX-Evil: 1"));
  char longid[80];
  memset(longid, 'a', 65);
  longid[65] = 0;
  assert_false(srv_request_id_ok(longid));
}

static void test_levels(void **state) {
  (void)state;
  srv_log_set_level(SRV_LOG_WARN);
  assert_false(srv_log_enabled(SRV_LOG_INFO));
  assert_true(srv_log_enabled(SRV_LOG_WARN));
  assert_true(srv_log_enabled(SRV_LOG_ERROR));
  srv_log_set_level(SRV_LOG_INFO);
  assert_true(srv_log_enabled(SRV_LOG_INFO));
  assert_false(srv_log_enabled(SRV_LOG_DEBUG));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_escape),
    cmocka_unit_test(test_utf8_sanitize),
    cmocka_unit_test(test_jbuf_line),
    cmocka_unit_test(test_jbuf_overflow),
    cmocka_unit_test(test_rfc3339),
    cmocka_unit_test(test_request_ids),
    cmocka_unit_test(test_levels),
  };
  return cmocka_run_group_tests_name("server/log", tests, NULL, NULL);
}
