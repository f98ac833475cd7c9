/* http.c — tests for api/response.c: the one error shape, response headers, Range parsing,
 * If-None-Match matching, id/name validators and the RFC 3339 time format. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api_int.h"

static json_t *body_json(const api_response *r) {
  json_error_t je;
  json_t *v = json_loadb(r->body, r->body_len, 0, &je);
  if (!v) fail_msg("body is not JSON: %.*s", (int)r->body_len, r->body);
  return v;
}

static void test_error_shape(void **state) {
  (void)state;
  struct { int err; int status; const char *code; } rows[] = {
    {MOPT_ESPEC, 400, "invalid_spec"}, {MOPT_ENOTFOUND, 404, "not_found"},
    {MOPT_EMETHOD, 405, "method_not_allowed"}, {MOPT_EAUTH, 401, "unauthorized"},
    {MOPT_EFORBIDDEN, 403, "forbidden"}, {MOPT_EBUSY, 429, "busy"},
    {MOPT_EPARSE, 422, "invalid_model"}, {MOPT_ERANGE, 416, "range_not_satisfiable"},
    {MOPT_EDIGEST, 400, "digest_mismatch"}, {MOPT_ECONFLICT, 409, "conflict"},
    {MOPT_ELIMIT, 413, "too_large"}, {MOPT_EINTERNAL, 500, "internal"},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    api_response r;
    api_response_init(&r);
    api_error(&r, rows[i].err, "what \"went\" wrong\n", "/passes/0/sparsity",
              "{\"expected\":\"a\",\"n\":3}");
    assert_int_equal(r.status, rows[i].status);
    assert_string_equal(r.content_type, "application/json");
    assert_string_equal(r.error_code, rows[i].code);
    json_t *v = body_json(&r);
    assert_int_equal(json_object_size(v), 1);
    json_t *e = json_object_get(v, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), rows[i].code);
    assert_string_equal(json_string_value(json_object_get(e, "message")), "what \"went\" wrong\n");
    json_t *det = json_object_get(e, "detail");
    assert_string_equal(json_string_value(json_object_get(det, "where")), "/passes/0/sparsity");
    assert_string_equal(json_string_value(json_object_get(det, "expected")), "a");
    assert_int_equal(json_integer_value(json_object_get(det, "n")), 3);
    json_decref(v);
    free(r.body);
  }
  /* Defaults: message from the table, empty detail, bad detail JSON ignored. */
  api_response r;
  api_response_init(&r);
  api_error(&r, MOPT_ENOTFOUND, NULL, NULL, "not json");
  json_t *v = body_json(&r);
  json_t *e = json_object_get(v, "error");
  assert_string_equal(json_string_value(json_object_get(e, "message")), "not found");
  assert_int_equal(json_object_size(json_object_get(e, "detail")), 0);
  json_decref(v);
  /* An empty where is kept (the JSON pointer of the whole spec). */
  api_error(&r, MOPT_ESPEC, "a job spec must be a JSON object", "", NULL);
  v = body_json(&r);
  e = json_object_get(v, "error");
  assert_string_equal(json_string_value(json_object_get(json_object_get(e, "detail"), "where")), "");
  json_decref(v);
  /* Invalid UTF-8 in a message still yields valid JSON. */
  api_error(&r, MOPT_EBADREQ, "bad \xff byte", "x", NULL);
  v = body_json(&r);
  json_decref(v);
  free(r.body);
  /* From a diag. */
  mopt_diag d;
  mopt_diag_set(&d, MOPT_EPARSE, "byte 12", "truncated varint");
  api_response_init(&r);
  api_error_diag(&r, MOPT_EPARSE, &d);
  v = body_json(&r);
  e = json_object_get(v, "error");
  assert_string_equal(json_string_value(json_object_get(e, "message")), "truncated varint");
  assert_string_equal(json_string_value(json_object_get(json_object_get(e, "detail"), "where")),
                      "byte 12");
  json_decref(v);
  free(r.body);
}

static void test_response_headers(void **state) {
  (void)state;
  api_response r;
  api_response_init(&r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.file_fd, -1);
  api_response_header(&r, "Content-Range", "bytes %d-%d/%d", 0, 9, 100);
  api_response_header(&r, "ETag", "\"%s\"", "abc");
  assert_int_equal(r.n_headers, 2);
  assert_string_equal(r.headers[0].name, "Content-Range");
  assert_string_equal(r.headers[0].value, "bytes 0-9/100");
  assert_string_equal(r.headers[1].value, "\"abc\"");
}

static void test_range_parse(void **state) {
  (void)state;
  struct { const char *h; uint64_t size; int rc; uint64_t start, len; } rows[] = {
    {NULL, 100, 0, 0, 0},
    {"bytes=0-9", 100, 1, 0, 10},
    {"bytes=10-", 100, 1, 10, 90},
    {"bytes=-10", 100, 1, 90, 10},
    {"bytes=-1000", 100, 1, 0, 100},
    {"bytes=95-1000", 100, 1, 95, 5},
    {"bytes=99-99", 100, 1, 99, 1},
    {"BYTES=0-0", 100, 1, 0, 1},
    {"bytes=100-", 100, MOPT_ERANGE, 0, 0},
    {"bytes=100-200", 100, MOPT_ERANGE, 0, 0},
    {"bytes=-0", 100, MOPT_ERANGE, 0, 0},
    {"bytes=0-", 0, MOPT_ERANGE, 0, 0},
    {"bytes=-5", 0, MOPT_ERANGE, 0, 0},
    {"bytes=0-1,5-6", 100, 0, 0, 0},       /* several ranges: whole content */
    {"bytes=9-0", 100, 0, 0, 0},           /* invalid: ignored */
    {"bytes=abc", 100, 0, 0, 0},
    {"bytes=", 100, 0, 0, 0},
    {"bytes=-", 100, 0, 0, 0},
    {"items=0-9", 100, 0, 0, 0},
    {"bytes=0-9x", 100, 0, 0, 0},
    {"bytes=99999999999999999999999-", 100, 0, 0, 0},   /* overflow: ignored */
    {"bytes=0-18446744073709551615", 100, 1, 0, 100},
    {"bytes=1073741824-", 2147483648ull, 1, 1073741824ull, 1073741824ull},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    uint64_t s = 777, l = 777;
    int rc = api_range_parse(rows[i].h, rows[i].size, &s, &l);
    if (rc != rows[i].rc) fail_msg("%s: rc %d want %d", rows[i].h, rc, rows[i].rc);
    if (rc == 1) {
      assert_int_equal(s, rows[i].start);
      assert_int_equal(l, rows[i].len);
    }
  }
}

static void test_etag_match(void **state) {
  (void)state;
  const char *tag = "\"abc\"";
  assert_true(api_etag_match("\"abc\"", tag));
  assert_true(api_etag_match("W/\"abc\"", tag));
  assert_true(api_etag_match("\"x\", \"abc\"", tag));
  assert_true(api_etag_match("W/\"x\",W/\"abc\"", tag));
  assert_true(api_etag_match("*", tag));
  assert_false(api_etag_match("\"abcd\"", tag));
  assert_false(api_etag_match("\"ab\"", tag));
  assert_false(api_etag_match("abc", tag));
  assert_false(api_etag_match("", tag));
  assert_false(api_etag_match(NULL, tag));
  assert_false(api_etag_match("\"abc", tag));
  assert_true(api_etag_match("\"job_1.3\"", "\"job_1.3\""));
  assert_false(api_etag_match("\"job_1.3\"", "\"job_1.4\""));
}

static void test_validators(void **state) {
  (void)state;
  assert_true(api_model_id_valid(
      "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
  assert_false(api_model_id_valid(
      "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"));
  assert_false(api_model_id_valid("sha256:0123"));
  assert_false(api_model_id_valid(
      "sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
  assert_false(api_model_id_valid(NULL));
  assert_true(api_job_id_valid("job_0123456789abc0123456789abc"));
  assert_false(api_job_id_valid("job_0123456789abc0123456789ab"));
  assert_false(api_job_id_valid("job_0123456789abc0123456789aB"));
  assert_false(api_job_id_valid("job_../../../../../../../etc/x"));
  struct { const char *s; int ok; } names[] = {
    {"kws", 1}, {"kws/stable", 1}, {"a.b_c-d/E9", 1}, {"v1.2.3", 1},
    {"", 0}, {"/abs", 0}, {"a/", 0}, {"a//b", 0}, {"..", 0}, {"a/../b", 0}, {"a..b", 0},
    {"a b", 0}, {"a\nb", 0}, {"a%2Fb", 0}, {"a\\b", 0}, {"ä", 0},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (api_name_valid(names[i].s, 127) != names[i].ok) fail_msg("name %s", names[i].s);
  char lng[200];
  memset(lng, 'a', 128);
  lng[128] = 0;
  assert_false(api_name_valid(lng, 127));
  lng[127] = 0;
  assert_true(api_name_valid(lng, 127));
}

static void test_time_format(void **state) {
  (void)state;
  char buf[40];
  api_time_format(0, buf, sizeof buf);
  assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
  api_time_format(1795821000123, buf, sizeof buf);
  assert_string_equal(buf, "2026-11-27T23:10:00.123Z");
  int64_t now = api_now_ms();
  assert_true(now > 1700000000000);
}

static void test_job_json(void **state) {
  (void)state;
  store_job j;
  memset(&j, 0, sizeof j);
  snprintf(j.id, sizeof j.id, "job_0123456789abc0123456789abc");
  snprintf(j.model, sizeof j.model, "sha256:%064d", 0);
  snprintf(j.step, sizeof j.step, "quantize \"w\"");
  j.state = STORE_JOB_SUCCEEDED;
  j.progress = 0.42;
  j.created = 1795821000123;
  j.rev = 9;
  j.spec = "{\"passes\":[{\"op\":\"prune\",\"sparsity\":0.1}],\"seed\":0}";
  j.report = "{\"snr_db\":42.123456789012345} \n";
  j.error = "not json";
  snprintf(j.output, sizeof j.output, "sha256:%064d", 1);
  char *t = api_job_json(&j);
  assert_non_null(t);
  json_error_t je;
  json_t *v = json_loads(t, 0, &je);
  assert_non_null(v);
  assert_string_equal(json_string_value(json_object_get(v, "state")), "succeeded");
  assert_string_equal(json_string_value(json_object_get(v, "step")), "quantize \"w\"");
  assert_true(json_real_value(json_object_get(v, "progress")) == 0.42);
  assert_string_equal(json_string_value(json_object_get(v, "created")), "2026-11-27T23:10:00.123Z");
  assert_true(json_is_null(json_object_get(v, "started")));
  assert_true(json_is_null(json_object_get(v, "error")));   /* invalid stored text → null */
  assert_int_equal(json_integer_value(json_object_get(v, "rev")), 9);
  assert_non_null(strstr(json_string_value(json_object_get(v, "output_url")), "/content"));
  /* Embedded documents are spliced verbatim: numbers keep their text. */
  assert_non_null(strstr(t, "\"sparsity\":0.1}"));
  assert_non_null(strstr(t, "\"snr_db\":42.123456789012345}"));
  json_decref(v);
  free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_error_shape),
    cmocka_unit_test(test_response_headers),
    cmocka_unit_test(test_range_parse),
    cmocka_unit_test(test_etag_match),
    cmocka_unit_test(test_validators),
    cmocka_unit_test(test_time_format),
    cmocka_unit_test(test_job_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
