/* dtype.c — ONNX tensor data types: names, widths, and float16/bfloat16 conversions.
 *
 * One table indexed by the ONNX DataType value (ggml-style type traits) gives the name and the
 * bit width; everything that needs a per-dtype fact reads it from here. The half conversions
 * are exact bit manipulations (round to nearest even) rather than compiler _Float16, so the
 * results are identical on every platform and compiler.
 */
#include "mopt.h"

#include <assert.h>
#include <string.h>

typedef struct dtype_traits { const char *name; int bits; } dtype_traits;

static const dtype_traits dtype_table[MOPT_DT_COUNT_] = {
  [MOPT_DT_UNDEFINED] = {"undefined", 0},
  [MOPT_DT_FLOAT] = {"float32", 32},
  [MOPT_DT_UINT8] = {"uint8", 8},
  [MOPT_DT_INT8] = {"int8", 8},
  [MOPT_DT_UINT16] = {"uint16", 16},
  [MOPT_DT_INT16] = {"int16", 16},
  [MOPT_DT_INT32] = {"int32", 32},
  [MOPT_DT_INT64] = {"int64", 64},
  [MOPT_DT_STRING] = {"string", 0},
  [MOPT_DT_BOOL] = {"bool", 8},
  [MOPT_DT_FLOAT16] = {"float16", 16},
  [MOPT_DT_DOUBLE] = {"float64", 64},
  [MOPT_DT_UINT32] = {"uint32", 32},
  [MOPT_DT_UINT64] = {"uint64", 64},
  [MOPT_DT_COMPLEX64] = {"complex64", 64},
  [MOPT_DT_COMPLEX128] = {"complex128", 128},
  [MOPT_DT_BFLOAT16] = {"bfloat16", 16},
  [MOPT_DT_FLOAT8E4M3FN] = {"float8e4m3fn", 8},
  [MOPT_DT_FLOAT8E4M3FNUZ] = {"float8e4m3fnuz", 8},
  [MOPT_DT_FLOAT8E5M2] = {"float8e5m2", 8},
  [MOPT_DT_FLOAT8E5M2FNUZ] = {"float8e5m2fnuz", 8},
  [MOPT_DT_UINT4] = {"uint4", 4},
  [MOPT_DT_INT4] = {"int4", 4},
};
static_assert(sizeof dtype_table / sizeof dtype_table[0] == MOPT_DT_COUNT_, "dtype table size");

const char *mopt_dtype_name(int32_t dt) {
  if (dt < 0 || dt >= MOPT_DT_COUNT_ || !dtype_table[dt].name) return "unknown";
  return dtype_table[dt].name;
}

int mopt_dtype_bits(int32_t dt) {
  if (dt < 0 || dt >= MOPT_DT_COUNT_) return 0;
  return dtype_table[dt].bits;
}

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t mopt_f32_to_f16(float f) {
  uint32_t x = f2u(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) /* inf or NaN (keep NaN quiet and non-zero) */
    return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds beyond 65504 → inf */
  if (ax < 0x38800000u) { /* result is subnormal or zero: value = m * 2^-24 */
    if (ax < 0x33000000u) return sign; /* below half of the smallest subnormal */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 + ... bits to drop so that unit = 2^-24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  /* normal: rebias exponent, round mantissa from 23 to 10 bits (carry may bump exponent) */
  uint32_t v = ax - 0x38000000u; /* exponent bias 127 → 15 */
  uint32_t q = v >> 13, rem = v & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
  return (uint16_t)(sign | q);
}

float mopt_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return u2f(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    if (m == 0) return u2f(sign);
    float v = (float)m * (1.0f / 16777216.0f); /* m * 2^-24, exact */
    return sign ? -v : v;
  }
  return u2f(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t mopt_f32_to_bf16(float f) {
  uint32_t x = f2u(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
  uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)((x + rounding) >> 16);
}

float mopt_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }
