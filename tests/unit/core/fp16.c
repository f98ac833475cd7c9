/* tests/unit/core/fp16.c — fp16 pass kernel: bit equality with the reference (clamp + the
 * library's converter) over edge cases and random data; clamping counted; NaN kept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "ktest.h"
#include "mopt.h"

static void matches_reference(void **st) {
  (void)st;
  enum { N = 200000 };
  float *x = malloc(N * sizeof *x);
  uint16_t *a = malloc(N * 2), *b = malloc(N * 2);
  uint64_t s = 17;
  for (size_t i = 0; i < N; i++) {              /* random bit patterns over every exponent */
    uint32_t u = (uint32_t)mopt_rng_next(&s);
    memcpy(&x[i], &u, 4);
    if (x[i] != x[i]) x[i] = 1.0f;              /* NaN payloads checked separately */
  }
  const float edge[] = {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, -1e9f, 1e9f, INFINITY,
                        -INFINITY, 5.96e-8f, 2.98e-8f, 2.99e-8f, 6.1035e-5f, 6.09e-5f, 1.0f / 3};
  memcpy(x, edge, sizeof edge);
  uint64_t ca = mopt_fp16_convert(x, N, a), cb = mopt_fp16_convert_ref(x, N, b);
  assert_int_equal(ca, cb);
  assert_memory_equal(a, b, N * 2);
  assert_int_equal(a[2], 0x7bff);
  assert_int_equal(a[3], 0x7bff);              /* 65519 clamps to 65504 instead of rounding up */
  assert_int_equal(a[6], 0x7bff);
  assert_int_equal(a[5], 0xfbff);
  assert_int_equal(a[7], 0x7bff);              /* +inf is clamped too */
  assert_int_equal(a[1], 0x8000);
  free(x); free(a); free(b);
}

static void counts_clamped_and_keeps_nan(void **st) {
  (void)st;
  float x[6] = {1.0f, 70000.0f, -70000.0f, NAN, 0.5f, 65504.0f};
  uint16_t h[6];
  assert_int_equal(mopt_fp16_convert(x, 6, h), 2);
  assert_int_equal(h[0], 0x3c00);
  assert_int_equal(h[4], 0x3800);
  assert_true((h[3] & 0x7c00) == 0x7c00 && (h[3] & 0x3ff) != 0);
  assert_true(mopt_f16_to_f32(h[1]) == 65504.0f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(matches_reference),
    cmocka_unit_test(counts_clamped_and_keeps_nan),
  };
  return cmocka_run_group_tests_name("core/fp16", tests, NULL, NULL);
}
