/* tests for core/dtype.c (names, widths, float16/bfloat16 conversions) and core/sha256.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "mopt.h"

static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static void test_names_bits(void **state) {
  (void)state;
  assert_string_equal(mopt_dtype_name(MOPT_DT_FLOAT), "float32");
  assert_string_equal(mopt_dtype_name(MOPT_DT_INT8), "int8");
  assert_string_equal(mopt_dtype_name(MOPT_DT_UINT4), "uint4");
  assert_string_equal(mopt_dtype_name(MOPT_DT_DOUBLE), "float64");
  assert_string_equal(mopt_dtype_name(MOPT_DT_BFLOAT16), "bfloat16");
  assert_string_equal(mopt_dtype_name(-1), "unknown");
  assert_string_equal(mopt_dtype_name(MOPT_DT_COUNT_), "unknown");
  assert_string_equal(mopt_dtype_name(1000), "unknown");
  assert_int_equal(mopt_dtype_bits(MOPT_DT_FLOAT), 32);
  assert_int_equal(mopt_dtype_bits(MOPT_DT_FLOAT16), 16);
  assert_int_equal(mopt_dtype_bits(MOPT_DT_INT64), 64);
  assert_int_equal(mopt_dtype_bits(MOPT_DT_INT4), 4);
  assert_int_equal(mopt_dtype_bits(MOPT_DT_UINT4), 4);
  assert_int_equal(mopt_dtype_bits(MOPT_DT_BOOL), 8);
  assert_int_equal(mopt_dtype_bits(MOPT_DT_STRING), 0);
  assert_int_equal(mopt_dtype_bits(MOPT_DT_UNDEFINED), 0);
  assert_int_equal(mopt_dtype_bits(99), 0);
}

/* Every finite half converts to float and back to the same bits. */
static void test_f16_roundtrip_all(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = mopt_f16_to_f32((uint16_t)h);
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) { assert_true(isnan(f)); continue; }
    assert_int_equal(mopt_f32_to_f16(f), h);
  }
}

static void test_f16_values(void **state) {
  (void)state;
  assert_int_equal(mopt_f32_to_f16(1.0f), 0x3c00);
  assert_int_equal(mopt_f32_to_f16(-2.0f), 0xc000);
  assert_int_equal(mopt_f32_to_f16(65504.0f), 0x7bff);
  assert_int_equal(mopt_f32_to_f16(65519.0f), 0x7bff);   /* below the halfway point */
  assert_int_equal(mopt_f32_to_f16(65520.0f), 0x7c00);   /* ties to even → inf */
  assert_int_equal(mopt_f32_to_f16(1e10f), 0x7c00);
  assert_int_equal(mopt_f32_to_f16(-1e10f), 0xfc00);
  assert_int_equal(mopt_f32_to_f16(INFINITY), 0x7c00);
  assert_true(isnan(mopt_f16_to_f32(mopt_f32_to_f16(NAN))));
  /* smallest subnormal 2^-24 and rounding around it */
  assert_int_equal(mopt_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
  assert_int_equal(mopt_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);          /* tie → even (0) */
  assert_int_equal(mopt_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
  assert_int_equal(mopt_f32_to_f16(ldexpf(3.0f, -25)), 0x0002);          /* 1.5 ulp tie → 2 */
  assert_int_equal(mopt_f32_to_f16(-0.0f), 0x8000);
  /* ties to even in the normal range: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 */
  assert_int_equal(mopt_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
  assert_int_equal(mopt_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
  assert_int_equal(mopt_f32_to_f16(u2f(0x3f800001u)), 0x3c00);
  /* largest subnormal → smallest normal carry */
  assert_int_equal(mopt_f32_to_f16(ldexpf(1023.75f, -24)), 0x0400);
  assert_true(mopt_f16_to_f32(0x0400) == ldexpf(1.0f, -14));
  assert_true(mopt_f16_to_f32(0x3555) > 0.333f && mopt_f16_to_f32(0x3555) < 0.3334f);
}

/* Conversion of random floats equals the nearest half (checked by brute force neighbours). */
static void test_f16_nearest(void **state) {
  (void)state;
  uint32_t s = 12345;
  for (int i = 0; i < 200000; i++) {
    s = s * 1664525u + 1013904223u;
    float f = u2f((s & 0x8fffffffu) | 0x30000000u); /* magnitudes ~2^-31 .. 2^33 */
    if (!isfinite(f) || fabsf(f) > 65504.0f) continue;
    uint16_t h = mopt_f32_to_f16(f);
    double err = fabs((double)mopt_f16_to_f32(h) - f);
    uint16_t up = (uint16_t)(h + 1), dn = (uint16_t)(h - 1);
    if ((up & 0x7c00u) != 0x7c00u) assert_true(err <= fabs((double)mopt_f16_to_f32(up) - f));
    if ((h & 0x7fffu) != 0) assert_true(err <= fabs((double)mopt_f16_to_f32(dn) - f));
  }
}

static void test_bf16(void **state) {
  (void)state;
  assert_int_equal(mopt_f32_to_bf16(1.0f), 0x3f80);
  assert_true(mopt_bf16_to_f32(0x3f80) == 1.0f);
  assert_true(mopt_bf16_to_f32(0xc040) == -3.0f);
  /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even → 1 */
  assert_int_equal(mopt_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);
  assert_int_equal(mopt_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82);
  assert_true(isnan(mopt_bf16_to_f32(mopt_f32_to_bf16(NAN))));
  assert_int_equal(mopt_f32_to_bf16(INFINITY), 0x7f80);
  for (uint32_t h = 0; h < 65536; h++) {
    if ((h & 0x7f80u) == 0x7f80u && (h & 0x7fu)) continue;
    assert_int_equal(mopt_f32_to_bf16(mopt_bf16_to_f32((uint16_t)h)), h);
  }
}

static void test_sha256(void **state) {
  (void)state;
  char hex[65];
  mopt_sha256_hex((const uint8_t *)"abc", 3, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  mopt_sha256_hex(NULL, 0, hex);
  assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_names_bits),
    cmocka_unit_test(test_f16_roundtrip_all),
    cmocka_unit_test(test_f16_values),
    cmocka_unit_test(test_f16_nearest),
    cmocka_unit_test(test_bf16),
    cmocka_unit_test(test_sha256),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
