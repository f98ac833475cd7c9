/* tests/unit/core/report.c — the hand-written report JSON: parses with a real JSON parser
 * (jansson), strings with quotes, backslashes, control characters and UTF-8 round-trip, non-finite
 * numbers become null, and the documented fields are present with the values given; the
 * distinct-value count behind the report's "distinct" fields against a qsort reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "ktest.h"
#include "mopt.h"
#include "pipeline_int.h"

static void escapes_and_parses(void **st) {
  (void)st;
  mopt_report r;
  memset(&r, 0, sizeof r);
  r.n_tensors = r.cap_tensors = 2;
  r.t = calloc(2, sizeof *r.t);
  const char *odd = "w\"eird\\name\n\t\x01 caf\xc3\xa9";
  r.t[0].name = strdup(odd);
  r.t[0].graph_path = strdup("main/If_0.then_branch");
  r.t[0].consumer = strdup("MatMul");
  r.t[0].loc = MOPT_LOC_CONSTANT;
  r.t[0].ndim = 2;
  r.t[0].dims[0] = 64;
  r.t[0].dims[1] = 96;
  r.t[0].dtype_before = MOPT_DT_FLOAT;
  snprintf(r.t[0].dtype_after, sizeof r.t[0].dtype_after, "int8");
  r.t[0].encoding = "quantized";
  r.t[0].bytes_before = 24576;
  r.t[0].bytes_after = 6528;
  r.t[0].sparsity = 0.5;
  r.t[0].distinct = 16;
  r.t[0].snr_db = INFINITY;              /* not representable in JSON → null */
  r.t[0].max_abs_err = 0.0123;
  r.t[0].n_passes = 1;
  r.t[0].passes[0].sparsity = 0.5;
  r.t[0].passes[0].distinct = 16;
  snprintf(r.t[0].passes[0].note, sizeof r.t[0].passes[0].note, "a \"quoted\" note");
  r.t[1].name = strdup("plain");
  r.t[1].encoding = "unchanged";
  r.t[1].snr_db = 999.0;
  r.n_passes = 1;
  r.p[0].op = MOPT_PASS_QUANTIZE;
  r.p[0].time_ms = 1.5;
  r.p[0].elems = 100;
  r.p[0].zeros_after = 50;
  r.file_bytes_before = 1000;
  r.zstd_bytes_after = 77;
  r.peak_rss_bytes = 123456789;
  char *s = mopt_report_json(&r);
  assert_non_null(s);
  json_error_t err;
  json_t *root = json_loads(s, 0, &err);
  if (!root) print_message("# %s at %d: %s\n", err.text, err.position, s);
  assert_non_null(root);
  json_t *t0 = json_array_get(json_object_get(root, "tensors"), 0);
  assert_string_equal(json_string_value(json_object_get(t0, "name")), odd);
  assert_string_equal(json_string_value(json_object_get(t0, "location")), "constant");
  assert_string_equal(json_string_value(json_object_get(t0, "graph_path")), "main/If_0.then_branch");
  assert_true(json_is_null(json_object_get(t0, "snr_db")));
  assert_int_equal(json_integer_value(json_object_get(t0, "bytes_after")), 6528);
  assert_int_equal(json_array_size(json_object_get(t0, "shape")), 2);
  assert_true(fabs(json_number_value(json_object_get(t0, "max_abs_error")) - 0.0123) < 1e-9);
  json_t *tp = json_array_get(json_object_get(t0, "passes"), 0);
  assert_string_equal(json_string_value(json_object_get(tp, "op")), "quantize");
  assert_string_equal(json_string_value(json_object_get(tp, "note")), "a \"quoted\" note");
  json_t *t1 = json_array_get(json_object_get(root, "tensors"), 1);
  assert_true(json_is_null(json_object_get(t1, "consumer")));
  json_t *p0 = json_array_get(json_object_get(root, "passes"), 0);
  assert_true(fabs(json_number_value(json_object_get(p0, "sparsity_after")) - 0.5) < 1e-12);
  json_t *tot = json_object_get(root, "totals");
  assert_int_equal(json_integer_value(json_object_get(tot, "file_bytes_before")), 1000);
  assert_int_equal(json_integer_value(json_object_get(tot, "zstd_bytes_after")), 77);
  assert_int_equal(json_integer_value(json_object_get(tot, "peak_rss_bytes")), 123456789);
  assert_int_equal(json_integer_value(json_object_get(tot, "tensors_selected")), 2);
  json_decref(root);
  free(s);
  mopt_report_free(&r);
}

static void string_builder(void **st) {
  (void)st;
  mopt_sb b = {0};
  for (int i = 0; i < 2000; i++) mopt_sb_printf(&b, "%d,", i);   /* grows past several doublings */
  mopt_sb_json_str(&b, NULL);
  mopt_sb_json_num(&b, NAN);
  mopt_sb_json_num(&b, 3.0);
  assert_false(b.oom);
  assert_true(strncmp(b.buf, "0,1,2,", 6) == 0);
  assert_non_null(strstr(b.buf, "1999,nullnull3"));
  free(b.buf);
  /* invalid UTF-8 (a lone 0xff, a truncated sequence, an overlong '/') becomes U+FFFD */
  mopt_sb c = {0};
  mopt_sb_json_str(&c, "a\xff b\xc3 c\xc0\xaf \xe2\x82\xac");
  assert_string_equal(c.buf, "\"a\\ufffd b\\ufffd c\\ufffd\\ufffd \xe2\x82\xac\"");
  json_t *v = json_loads(c.buf, JSON_DECODE_ANY, NULL);
  assert_non_null(v);
  json_decref(v);
  free(c.buf);
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* Reference twin: distinct bit patterns after folding -0 onto +0, by qsort of the bits. */
static uint64_t distinct_ref(const float *x, size_t n) {
  if (!n) return 0;
  uint32_t *b = malloc(n * sizeof *b);
  for (size_t i = 0; i < n; i++) {
    float v = x[i] == 0.0f ? 0.0f : x[i];
    memcpy(&b[i], &v, 4);
  }
  qsort(b, n, sizeof *b, cmp_u32);
  uint64_t d = 1;
  for (size_t i = 1; i < n; i++) d += b[i] != b[i - 1];
  free(b);
  return d;
}

static void distinct_count_matches_reference(void **st) {
  (void)st;
  const size_t n = 50000;
  float *x = malloc(n * sizeof *x);
  mopt_distinct *dc = mopt_distinct_new();      /* one counter across every call below */
  assert_non_null(dc);
  const uint32_t odd_bits[] = {0x80000000u, 0x7fc00000u, 0x7fc00001u, 0xffc00000u, 0x7f800000u,
                               0xff800000u, 0x00000001u, 0x80000001u, 0x007fffffu};
  for (int shape = 0; shape < 5; shape++) {
    kt_gauss(x, n, 100 + (uint64_t)shape, 0.05);
    if (shape == 1)                              /* many repeats: a 4-bit-like grid */
      for (size_t i = 0; i < n; i++) x[i] = nearbyintf(x[i] * 160) / 160;
    if (shape == 2)                              /* zeros of both signs, NaNs, infinities, subnormals */
      for (size_t i = 0; i < n; i += 97) memcpy(&x[i], &odd_bits[(i / 97) % 9], 4);
    if (shape == 3)                              /* one value: a single bucket far above 4096 */
      for (size_t i = 0; i < n; i++) x[i] = -0.25f;
    if (shape == 4)                              /* values differing only in the lowest bits */
      for (size_t i = 0; i < n; i++) x[i] = 1.0f + (float)(i % 1500) * 0x1p-23f;
    /* sizes with and without a tail after the four lanes, small and large buckets */
    const size_t sizes[] = {1, 2, 3, 5, 1001, n - 1, n};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
      uint64_t want = distinct_ref(x, sizes[k]), got = 0;
      assert_int_equal(mopt_count_distinct(x, sizes[k]), want);
      assert_int_equal(mopt_distinct_count(dc, x, sizes[k], &got), 0);
      assert_int_equal(got, want);
    }
  }
  uint64_t got = 7;
  assert_int_equal(mopt_distinct_count(dc, x, 0, &got), 0);
  assert_int_equal(got, 0);
  assert_int_equal(mopt_count_distinct(x, 0), 0);
  mopt_distinct_free(dc);
  free(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(escapes_and_parses),
    cmocka_unit_test(string_builder),
    cmocka_unit_test(distinct_count_matches_reference),
  };
  return cmocka_run_group_tests_name("core/report", tests, NULL, NULL);
}
