/* quantize.c — linear quantization kernels: parameters per tensor / channel / block, symmetric
 * or affine with an exactly representable zero, optional MSE clip search.
 *
 * Trade-off: the fast kernel computes ranges in one memory-order pass and only gathers groups
 * into a scratch buffer when the MSE search needs their values; it shares the parameter
 * arithmetic with the reference so both give bit-identical results (tested).
 */
#include "kernels.h"

#include <float.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mopt.h"

/* The streaming kernels are built twice, for AVX2 and for the x86-64 baseline, and the loader
 * picks one for the CPU it runs on (GCC function multiversioning); their run loops are forced
 * inline so each clone gets its own vector code. Not with clang 14 (it emits no resolver), nor
 * under ThreadSanitizer (the resolver runs during relocation, before the TSan runtime is up, and
 * crashes the program). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define MOPT_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MOPT_VECTOR_CLONES
#endif
#define MOPT_INLINE static inline __attribute__((always_inline))

const float mopt_clip_grid[MOPT_CLIP_GRID_N] = {
  1.0f, 0.975f, 0.95f, 0.925f, 0.9f, 0.875f, 0.85f, 0.825f, 0.8f, 0.775f,
  0.75f, 0.725f, 0.7f, 0.675f, 0.65f, 0.625f, 0.6f, 0.575f, 0.55f, 0.525f,
};

int mopt_qrange(int32_t qtype, int32_t *qmin, int32_t *qmax) {
  switch (qtype) {
  case MOPT_DT_INT8:  *qmin = -128; *qmax = 127; return 0;
  case MOPT_DT_UINT8: *qmin = 0;    *qmax = 255; return 0;
  case MOPT_DT_INT4:  *qmin = -8;   *qmax = 7;   return 0;
  case MOPT_DT_UINT4: *qmin = 0;    *qmax = 15;  return 0;
  default: return MOPT_EINVAL;
  }
}

size_t mopt_qlayout_groups(const mopt_qlayout *l) {
  switch (l->gran) {
  case 0: return 1;
  case 1: return (size_t)l->v.dim;
  default: {
    int64_t nb = (l->v.dim + l->block_size - 1) / l->block_size;
    return (size_t)(l->v.outer * nb * l->v.inner);
  }
  }
}

/* Round half to even for |v| <= 2^22 in the default rounding mode: adding 1.5 * 2^23 leaves no
 * fraction bits, so the FPU's own round-to-nearest-even does the work (no libm call, which is
 * what nearbyintf costs without SSE4.1). */
static inline float round_half_even(float v) {
  const float magic = 12582912.0f;
  return (v + magic) - magic;
}

int32_t mopt_quant1(float x, float scale, int32_t zp, int32_t qmin, int32_t qmax) {
  float v = x / scale;
  if (v != v) return zp;                       /* NaN → the zero */
  float lo = (float)(qmin - zp), hi = (float)(qmax - zp);
  if (v < lo) v = lo;
  if (v > hi) v = hi;                          /* now |v| <= 510: the trick below is exact */
  int32_t q = (int32_t)round_half_even(v) + zp;
  if (q < qmin) q = qmin;
  if (q > qmax) q = qmax;
  return q;
}

float mopt_dequant1(int32_t q, float scale, int32_t zp) {
  return (float)(q - zp) * scale;
}

static float sane_scale(float s) {
  if (!(s > 0.0f) || !isfinite(s)) return 1.0f;
  if (s < FLT_MIN) return FLT_MIN;
  return s;
}

/* Parameters from the group's range (lo <= 0 <= hi already folded in) and a clip ratio. */
static void params_from_range(float lo, float hi, const mopt_qconfig *c, float clip, float *scale,
                              int32_t *zp) {
  int32_t qmin = 0, qmax = 0;
  mopt_qrange(c->qtype, &qmin, &qmax);
  if (lo > 0.0f) lo = 0.0f;
  if (hi < 0.0f) hi = 0.0f;
  if (c->symmetric) {
    float amax = fmaxf(-lo, hi) * clip;
    int32_t z = qmin < 0 ? 0 : (qmax + 1) / 2;
    *zp = z;
    *scale = amax > 0.0f ? sane_scale(amax / (float)(qmax - z)) : 1.0f;
    return;
  }
  lo *= clip;
  hi *= clip;
  if (hi - lo <= 0.0f) {
    *scale = 1.0f;
    *zp = qmin < 0 ? 0 : qmin;
    return;
  }
  float s = sane_scale((hi - lo) / (float)(qmax - qmin));
  float zf = nearbyintf((float)qmin - lo / s);
  int32_t z = zf < (float)qmin ? qmin : zf > (float)qmax ? qmax : (int32_t)zf;
  *scale = s;
  *zp = z;
}

static void minmax(const float *v, size_t n, float *lo, float *hi) {
  float a = 0.0f, b = 0.0f;
  for (size_t i = 0; i < n; i++) {
    float x = v[i];
    if (x < a) a = x;
    if (x > b) b = x;
  }
  *lo = a;
  *hi = b;
}

static double group_sse(const mopt_f32u *v, size_t n, float s, int32_t z, int32_t qmin, int32_t qmax) {
  double e = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)v[i] - (double)mopt_dequant1(mopt_quant1(v[i], s, z, qmin, qmax), s, z);
    e += d * d;
  }
  return e;
}

/* The MSE search over the clip grid for one gathered group with known range. */
static void params_search(const mopt_f32u *v, size_t n, float lo, float hi, const mopt_qconfig *c,
                          float *scale, int32_t *zp) {
  int32_t qmin = 0, qmax = 0;
  mopt_qrange(c->qtype, &qmin, &qmax);
  params_from_range(lo, hi, c, 1.0f, scale, zp);
  if (!c->mse_search) return;
  double best = group_sse(v, n, *scale, *zp, qmin, qmax);
  for (int g = 1; g < MOPT_CLIP_GRID_N; g++) {
    float s;
    int32_t z;
    params_from_range(lo, hi, c, mopt_clip_grid[g], &s, &z);
    double e = group_sse(v, n, s, z, qmin, qmax);
    if (e < best) {
      best = e;
      *scale = s;
      *zp = z;
    }
  }
}

void mopt_qparams_ref(const float *vals, size_t n, const mopt_qconfig *c, float *scale, int32_t *zp) {
  float lo, hi;
  minmax(vals, n, &lo, &hi);
  params_search(vals, n, lo, hi, c, scale, zp);
}

/* Group index of element (o, d, i) — the formula the reference states. */
static size_t group_of(const mopt_qlayout *l, int64_t o, int64_t d, int64_t i) {
  switch (l->gran) {
  case 0: return 0;
  case 1: return (size_t)d;
  default: {
    int64_t nb = (l->v.dim + l->block_size - 1) / l->block_size;
    return (size_t)((o * nb + d / l->block_size) * l->v.inner + i);
  }
  }
}

static int layout_ok(const mopt_qlayout *l, const mopt_qconfig *c) {
  int32_t a, b;
  if (mopt_qrange(c->qtype, &a, &b) != 0) return 0;
  if (l->v.outer < 1 || l->v.dim < 1 || l->v.inner < 1) return 0;
  if (l->gran == 2 && l->block_size < 1) return 0;
  return l->gran >= 0 && l->gran <= 2;
}

int mopt_quantize_tensor_ref(const float *x, const mopt_qlayout *l, const mopt_qconfig *c,
                             float *scales, int32_t *zps, int32_t *q, float *deq) {
  if (!layout_ok(l, c)) return MOPT_EINVAL;
  int32_t qmin = 0, qmax = 0;
  mopt_qrange(c->qtype, &qmin, &qmax);
  size_t ng = mopt_qlayout_groups(l);
  size_t n = (size_t)(l->v.outer * l->v.dim * l->v.inner);
  float *buf = malloc((n ? n : 1) * sizeof *buf);
  if (!buf) return MOPT_ENOMEM;
  for (size_t g = 0; g < ng; g++) {
    size_t m = 0;
    for (int64_t o = 0; o < l->v.outer; o++)
      for (int64_t d = 0; d < l->v.dim; d++)
        for (int64_t i = 0; i < l->v.inner; i++)
          if (group_of(l, o, d, i) == g) buf[m++] = x[(o * l->v.dim + d) * l->v.inner + i];
    mopt_qparams_ref(buf, m, c, &scales[g], &zps[g]);
  }
  for (int64_t o = 0; o < l->v.outer; o++)
    for (int64_t d = 0; d < l->v.dim; d++)
      for (int64_t i = 0; i < l->v.inner; i++) {
        size_t e = (size_t)((o * l->v.dim + d) * l->v.inner + i);
        size_t g = group_of(l, o, d, i);
        q[e] = mopt_quant1(x[e], scales[g], zps[g], qmin, qmax);
        if (deq) deq[e] = mopt_dequant1(q[e], scales[g], zps[g]);
      }
  free(buf);
  return 0;
}

/* The arithmetic of mopt_quant1 with the clamp bounds lo = qmin - zp, hi = qmax - zp already
 * made floats, written so the run loops below vectorize (NaN is mapped to 0, i.e. to the zero
 * point, before clamping). */
MOPT_INLINE int32_t quant_value(float x, float s, int32_t zp, float lo, float hi) {
  const float magic = 12582912.0f;
  float v = x / s;
  v = v == v ? v : 0.0f;
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  return (int32_t)((v + magic) - magic) + zp;
}

/* A run of n elements sharing one (scale, zp). */
MOPT_INLINE void quant_run(const mopt_f32u *x, size_t n, float s, int32_t zp, int32_t qmin,
                           int32_t qmax, int32_t *q, float *deq) {
  const float lo = (float)(qmin - zp), hi = (float)(qmax - zp);
  for (size_t i = 0; i < n; i++) q[i] = quant_value(x[i], s, zp, lo, hi);
  if (deq)
    for (size_t i = 0; i < n; i++) deq[i] = (float)(q[i] - zp) * s;
}

/* A run of n elements whose group advances with the element: scales[i], zps[i]. */
MOPT_INLINE void quant_run_vec(const mopt_f32u *x, size_t n, const float *s, const int32_t *zp,
                               int32_t qmin, int32_t qmax, int32_t *q, float *deq) {
  for (size_t i = 0; i < n; i++)
    q[i] = quant_value(x[i], s[i], zp[i], (float)(qmin - zp[i]), (float)(qmax - zp[i]));
  if (deq)
    for (size_t i = 0; i < n; i++) deq[i] = (float)(q[i] - zp[i]) * s[i];
}

/* The same two storing each value's low byte (the raw_data of 8-bit types), for the streaming
 * encoder: no int32 round trip. */
MOPT_INLINE void quant_run_u8(const mopt_f32u *x, size_t n, float s, int32_t zp, int32_t qmin,
                              int32_t qmax, uint8_t *out) {
  const float lo = (float)(qmin - zp), hi = (float)(qmax - zp);
  for (size_t i = 0; i < n; i++) out[i] = (uint8_t)quant_value(x[i], s, zp, lo, hi);
}

MOPT_INLINE void quant_run_vec_u8(const mopt_f32u *x, size_t n, const float *s,
                                  const int32_t *zp, int32_t qmin, int32_t qmax, uint8_t *out) {
  for (size_t i = 0; i < n; i++)
    out[i] = (uint8_t)quant_value(x[i], s[i], zp[i], (float)(qmin - zp[i]), (float)(qmax - zp[i]));
}

void mopt_quantize_apply(const float *x, const mopt_qlayout *l, int32_t qtype, const float *scales,
                         const int32_t *zps, int32_t *q, float *deq) {
  int32_t qmin = 0, qmax = 0;
  mopt_qrange(qtype, &qmin, &qmax);
  const int64_t O = l->v.outer, D = l->v.dim, I = l->v.inner;
  size_t n = (size_t)(O * D * I);
#define DQ(e) (deq ? deq + (e) : NULL)
  if (l->gran == 0) {
    quant_run(x, n, scales[0], zps[0], qmin, qmax, q, deq);
  } else if (l->gran == 1) {
    for (int64_t o = 0; o < O; o++) {
      size_t e = (size_t)(o * D * I);
      if (I == 1) quant_run_vec(x + e, (size_t)D, scales, zps, qmin, qmax, q + e, DQ(e));
      else
        for (int64_t d = 0; d < D; d++, e += (size_t)I)
          quant_run(x + e, (size_t)I, scales[d], zps[d], qmin, qmax, q + e, DQ(e));
    }
  } else {
    const int64_t bs = l->block_size, nb = (D + bs - 1) / bs;
    for (int64_t o = 0; o < O; o++)
      for (int64_t d = 0; d < D; d++) {
        size_t e = (size_t)((o * D + d) * I), g = (size_t)((o * nb + d / bs) * I);
        if (I > 1) {
          quant_run_vec(x + e, (size_t)I, scales + g, zps + g, qmin, qmax, q + e, DQ(e));
        } else {                               /* inner 1: a whole block shares its group */
          int64_t d1 = (d / bs + 1) * bs;
          if (d1 > D) d1 = D;
          quant_run(x + e, (size_t)(d1 - d), scales[g], zps[g], qmin, qmax, q + e, DQ(e));
          d = d1 - 1;
        }
      }
  }
#undef DQ
}

/* ---- slices: the streaming kernels read x (any alignment: mopt_f32u loads compile to unaligned
 * vector loads) SLICE values at a time, so scratch stays small and hot. A slice is cut into
 * runs: values that share one group, or values whose group advances with them (channels along
 * the last axis, blocks with inner > 1). */
enum { SLICE = 4096 };

/* Walks elements [e, end) of layout l in runs; for each calls one of the two run kinds with
 * the group index g. Shared by the range pass and the streaming apply. */
#define FOR_EACH_RUN(l, e0, end, ONE_GROUP, GROUP_PER_VALUE)                                    \
  do {                                                                                         \
    const uint64_t D_ = (uint64_t)(l)->v.dim, I_ = (uint64_t)(l)->v.inner;                     \
    for (uint64_t e_ = (e0); e_ < (end);) {                                                    \
      uint64_t i_ = e_ % I_, d_ = (e_ / I_) % D_, o_ = e_ / (I_ * D_), run, g;                 \
      size_t at = (size_t)(e_ - (e0));                                                         \
      int per_value;                                                                           \
      if ((l)->gran == 0) {                                                                    \
        run = (end) - e_; g = 0; per_value = 0;                                                \
      } else if ((l)->gran == 1 && I_ == 1) {                                                  \
        run = D_ - d_; g = d_; per_value = 1;                                                  \
      } else if ((l)->gran == 1) {                                                             \
        run = I_ - i_; g = d_; per_value = 0;                                                  \
      } else {                                                                                 \
        const uint64_t bs_ = (uint64_t)(l)->block_size, nb_ = (D_ + bs_ - 1) / bs_;            \
        g = (o_ * nb_ + d_ / bs_) * I_ + i_;                                                   \
        if (I_ == 1) {                                                                         \
          uint64_t d1_ = (d_ / bs_ + 1) * bs_ < D_ ? (d_ / bs_ + 1) * bs_ : D_;                \
          run = d1_ - d_; per_value = 0;                                                       \
        } else {                                                                               \
          run = I_ - i_; per_value = 1;                                                        \
        }                                                                                      \
      }                                                                                        \
      if (run > (end) - e_) run = (end) - e_;                                                  \
      if (per_value) { GROUP_PER_VALUE; } else { ONE_GROUP; }                                  \
      e_ += run;                                                                               \
    }                                                                                          \
  } while (0)

/* 1 when the float's exponent is all ones (infinity or NaN). */
static inline uint32_t not_finite(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  return (u & 0x7f800000u) == 0x7f800000u;
}

/* Range of a run sharing group g, with eight independent lanes so the loop vectorizes; the
 * lanes start at 0, which every range holds anyway. */
MOPT_INLINE uint32_t range_one(const mopt_f32u *p, size_t n, float *lo, float *hi) {
  float mn[8] = {0}, mx[8] = {0};
  uint32_t bad = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) {
      float v = p[i + (size_t)j];
      mn[j] = v < mn[j] ? v : mn[j];
      mx[j] = v > mx[j] ? v : mx[j];
      bad |= not_finite(v);
    }
  for (; i < n; i++) {
    float v = p[i];
    mn[0] = v < mn[0] ? v : mn[0];
    mx[0] = v > mx[0] ? v : mx[0];
    bad |= not_finite(v);
  }
  for (int j = 0; j < 8; j++) {
    if (mn[j] < *lo) *lo = mn[j];
    if (mx[j] > *hi) *hi = mx[j];
  }
  return bad;
}

/* Ranges of a run whose group advances with the value: lo[j], hi[j] for p[j]. */
MOPT_INLINE uint32_t range_per_value(const mopt_f32u *p, size_t n, float *lo, float *hi) {
  uint32_t bad = 0;
  for (size_t j = 0; j < n; j++) {
    float v = p[j];
    lo[j] = v < lo[j] ? v : lo[j];
    hi[j] = v > hi[j] ? v : hi[j];
    bad |= not_finite(v);
  }
  return bad;
}

/* One memory-order pass for the ranges of every group (0 is always inside a range); returns
 * whether any value is NaN or infinite (those are left out of the ranges). */
MOPT_VECTOR_CLONES
static int ranges(const mopt_f32u *x, const mopt_qlayout *l, float *lo, float *hi) {
  const uint64_t n = (uint64_t)(l->v.outer * l->v.dim * l->v.inner);
  uint32_t bad = 0;
  for (uint64_t e0 = 0; e0 < n;) {
    uint64_t end = n - e0 < SLICE ? n : e0 + SLICE;
    const mopt_f32u *p = x + e0;
    FOR_EACH_RUN(l, e0, end, bad |= range_one(p + at, (size_t)run, &lo[g], &hi[g]),
                 bad |= range_per_value(p + at, (size_t)run, lo + g, hi + g));
    e0 = end;
  }
  return bad != 0;
}

int mopt_quantize_params(const mopt_f32u *x, const mopt_qlayout *l, const mopt_qconfig *c,
                         float *scales, int32_t *zps, int *nonfinite) {
  if (!layout_ok(l, c)) return MOPT_EINVAL;
  const int64_t D = l->v.dim, I = l->v.inner;
  size_t ng = mopt_qlayout_groups(l);
  int64_t nb = l->gran == 2 ? (D + l->block_size - 1) / l->block_size : 1;
  float *lo = calloc(ng, sizeof *lo), *hi = calloc(ng, sizeof *hi);
  if (!lo || !hi) { free(lo); free(hi); return MOPT_ENOMEM; }
  int bad = ranges(x, l, lo, hi);
  if (nonfinite) *nonfinite = bad;
  if (!c->mse_search) {
    for (size_t g = 0; g < ng; g++) params_search(NULL, 0, lo[g], hi[g], c, &scales[g], &zps[g]);
  } else if (l->gran == 0) {
    size_t n = (size_t)(l->v.outer * D * I);
    params_search(x, n, lo[0], hi[0], c, &scales[0], &zps[0]);
  } else {
    /* gather each group (strided) into scratch, then search */
    size_t gmax = l->gran == 1 ? (size_t)(l->v.outer * I) : (size_t)l->block_size;
    float *buf = malloc(gmax * sizeof *buf);
    if (!buf) { free(lo); free(hi); return MOPT_ENOMEM; }
    if (l->gran == 1) {
      for (int64_t d = 0; d < D; d++) {
        size_t m = 0;
        for (int64_t o = 0; o < l->v.outer; o++)
          memcpy(buf + m, x + (o * D + d) * I, (size_t)I * sizeof *buf), m += (size_t)I;
        params_search(buf, m, lo[d], hi[d], c, &scales[d], &zps[d]);
      }
    } else {
      for (int64_t o = 0; o < l->v.outer; o++)
        for (int64_t b = 0; b < nb; b++)
          for (int64_t i = 0; i < I; i++) {
            size_t m = 0;
            int64_t d1 = (b + 1) * l->block_size;
            if (d1 > D) d1 = D;
            for (int64_t d = b * l->block_size; d < d1; d++) buf[m++] = x[(o * D + d) * I + i];
            size_t g = (size_t)((o * nb + b) * I + i);
            params_search(buf, m, lo[g], hi[g], c, &scales[g], &zps[g]);
          }
    }
    free(buf);
  }
  free(lo);
  free(hi);
  return 0;
}

int mopt_quantize_tensor(const float *x, const mopt_qlayout *l, const mopt_qconfig *c,
                         float *scales, int32_t *zps, int32_t *q, float *deq) {
  int rc = mopt_quantize_params(x, l, c, scales, zps, NULL);
  if (rc) return rc;
  mopt_quantize_apply(x, l, c->qtype, scales, zps, q, deq);
  return 0;
}

/* Elements [e0, e1) into q (int32) or, when q is NULL, into out (low bytes). */
MOPT_VECTOR_CLONES
static void apply_range(const mopt_f32u *x, const mopt_qlayout *l, int32_t qtype,
                        const float *scales, const int32_t *zps, uint64_t e0, uint64_t e1,
                        int32_t *q, uint8_t *out) {
  int32_t qmin = 0, qmax = 0;
  mopt_qrange(qtype, &qmin, &qmax);
  for (uint64_t a = e0; a < e1;) {
    uint64_t end = e1 - a < SLICE ? e1 : a + SLICE;
    const mopt_f32u *p = x + a;
    int32_t *qa = q ? q + (a - e0) : NULL;
    uint8_t *oa = q ? NULL : out + (a - e0);
    FOR_EACH_RUN(l, a, end,
                 if (qa) quant_run(p + at, (size_t)run, scales[g], zps[g], qmin, qmax, qa + at, NULL);
                 else quant_run_u8(p + at, (size_t)run, scales[g], zps[g], qmin, qmax, oa + at),
                 if (qa) quant_run_vec(p + at, (size_t)run, scales + g, zps + g, qmin, qmax, qa + at, NULL);
                 else quant_run_vec_u8(p + at, (size_t)run, scales + g, zps + g, qmin, qmax, oa + at));
    a = end;
  }
}

void mopt_quantize_apply_range(const mopt_f32u *x, const mopt_qlayout *l, int32_t qtype,
                               const float *scales, const int32_t *zps, uint64_t e0, uint64_t e1,
                               int32_t *q) {
  apply_range(x, l, qtype, scales, zps, e0, e1, q, NULL);
}

void mopt_quantize_apply_range_u8(const mopt_f32u *x, const mopt_qlayout *l, int32_t qtype,
                                  const float *scales, const int32_t *zps, uint64_t e0,
                                  uint64_t e1, uint8_t *out) {
  apply_range(x, l, qtype, scales, zps, e0, e1, NULL, out);
}
