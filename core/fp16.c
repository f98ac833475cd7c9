/* fp16.c — float32 → IEEE half conversion for the fp16 pass, clamping to the finite fp16 range
 * (±65504) instead of producing infinities, and counting what was clamped for the report.
 *
 * Trade-off: a branchy bit-level converter (round to nearest even, subnormals handled) that is
 * exact and portable, rather than F16C intrinsics; the reference twin clamps and calls the
 * library's mopt_f32_to_f16, and the tests require bit equality between the two.
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

#include "mopt.h"

#define FP16_MAX 65504.0f

static uint16_t half_of(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  /* NaN */
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* rounds to inf (not reached after clamp) */
  if (ax < 0x38800000u) {                      /* below the smallest normal half: subnormal or 0 */
    if (ax < 0x33000000u) return sign;         /* < 2^-25 rounds to 0 */
    uint32_t e = ax >> 23;                      /* 102..112 */
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;                  /* keep 24 - shift bits → value in 2^-24 units */
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((ax - 0x38000000u) >> 13);    /* rebias exponent 127 → 15 */
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

uint64_t mopt_fp16_convert(const float *x, size_t n, uint16_t *out) {
  uint64_t clamped = 0;
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    if (v > FP16_MAX) { v = FP16_MAX; clamped++; }
    else if (v < -FP16_MAX) { v = -FP16_MAX; clamped++; }
    out[i] = half_of(v);
  }
  return clamped;
}

uint64_t mopt_fp16_convert_ref(const float *x, size_t n, uint16_t *out) {
  uint64_t clamped = 0;
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    if (isfinite(v) || isinf(v)) {
      if (v > FP16_MAX) { v = FP16_MAX; clamped++; }
      if (v < -FP16_MAX) { v = -FP16_MAX; clamped++; }
    }
    out[i] = mopt_f32_to_f16(v);
  }
  return clamped;
}
