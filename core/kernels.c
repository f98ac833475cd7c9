/* kernels.c — small shared kernels: axis views, the splitmix64 PRNG, radix sort of floats,
 * distinct counts, sparsity and SNR statistics used by the passes and the report.
 *
 * Trade-off: the radix sort costs one scratch copy (n floats) but sorts 4M values in tens of
 * milliseconds, which is what makes distinct counts and 1-D k-means cheap on big tensors.
 */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

mopt_axis_view mopt_view_make(const int64_t *dims, int32_t ndim, int32_t axis) {
  mopt_axis_view v = {1, 1, 1};
  int64_t n = 1;
  for (int32_t i = 0; i < ndim; i++) n *= dims[i];
  if (axis < 0 || axis >= ndim) {
    v.dim = n;
    return v;
  }
  for (int32_t i = 0; i < axis; i++) v.outer *= dims[i];
  v.dim = dims[axis];
  for (int32_t i = axis + 1; i < ndim; i++) v.inner *= dims[i];
  return v;
}

uint64_t mopt_rng_next(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double mopt_rng_unit(uint64_t *state) {
  return (double)(mopt_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* Monotone map of float bits to unsigned: negative floats reversed, positives above them. */
static uint32_t fkey(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

void mopt_sort_floats(float *x, size_t n, float *tmp) {
  if (n < 2) return;
  size_t cnt[3][2048];
  memset(cnt, 0, sizeof cnt);
  for (size_t i = 0; i < n; i++) {
    uint32_t k = fkey(x[i]);
    cnt[0][k & 2047]++;
    cnt[1][(k >> 11) & 2047]++;
    cnt[2][k >> 22]++;
  }
  float *src = x, *dst = tmp;
  for (int p = 0; p < 3; p++) {
    int sh = p * 11;
    size_t sum = 0;
    int trivial = 0;
    for (int b = 0; b < 2048; b++) {
      if (cnt[p][b] == n) trivial = 1;
      size_t c = cnt[p][b];
      cnt[p][b] = sum;
      sum += c;
    }
    if (trivial) continue;                       /* every key has the same digit */
    for (size_t i = 0; i < n; i++) {
      uint32_t k = fkey(src[i]);
      dst[cnt[p][(k >> sh) & 2047]++] = src[i];
    }
    float *t = src; src = dst; dst = t;
  }
  if (src != x) memcpy(x, src, n * sizeof *x);
}

uint64_t mopt_count_distinct(const float *x, size_t n) {
  if (n == 0) return 0;
  float *a = malloc(n * sizeof *a), *t = malloc(n * sizeof *t);
  if (!a || !t) { free(a); free(t); return 0; }
  for (size_t i = 0; i < n; i++) a[i] = x[i] == 0.0f ? 0.0f : x[i];   /* -0 == +0 */
  mopt_sort_floats(a, n, t);
  uint64_t d = 1;
  for (size_t i = 1; i < n; i++)
    if (memcmp(&a[i], &a[i - 1], 4) != 0) d++;
  free(a);
  free(t);
  return d;
}

double mopt_sparsity(const float *x, size_t n) {
  if (n == 0) return 0.0;
  size_t z = 0;
  for (size_t i = 0; i < n; i++) z += x[i] == 0.0f;
  return (double)z / (double)n;
}

double mopt_snr_db(const float *x, const float *y, size_t n, double *max_abs_err) {
  double sig = 0.0, noise = 0.0, mx = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)x[i] - (double)y[i];
    sig += (double)x[i] * (double)x[i];
    noise += d * d;
    if (fabs(d) > mx) mx = fabs(d);
  }
  if (max_abs_err) *max_abs_err = mx;
  if (noise == 0.0) return 999.0;
  if (sig == 0.0) return -999.0;
  double db = 10.0 * log10(sig / noise);
  if (db > 999.0) db = 999.0;
  if (db < -999.0) db = -999.0;
  return db;
}
