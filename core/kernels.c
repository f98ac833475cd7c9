/* kernels.c — small shared kernels: axis views, the splitmix64 PRNG, radix sort of floats,
 * distinct counts, sparsity and SNR statistics used by the passes and the report.
 *
 * Trade-off: the radix sort costs one scratch copy (n floats) but sorts 4M values in tens of
 * milliseconds, which is what makes 1-D k-means cheap on big tensors. Distinct counts need no
 * order, only grouping: one bucket scatter and a cache-resident bitmap (mopt_distinct_count).
 */
#include "kernels.h"
#include "mopt_error.h"

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

/* Distinct counting: one scatter of the keys into buckets by their top 11 bits (order inside
 * a bucket is free, so four lanes over four quarters of the input keep their own cursors and
 * never wait on one another's increments), then per bucket a test-and-set over a 2^21-bit
 * bitmap of the low bits, which stays in L2. Three passes over the data where a full radix sort
 * takes eight. */
enum { DC_TOP = 11, DC_BUCKETS = 1 << DC_TOP, DC_LOW = 32 - DC_TOP, DC_LANES = 4,
       DC_PAD = 16 };                            /* rows padded: no 4 KiB aliasing between lanes */

struct mopt_distinct {
  uint32_t *keys;
  size_t cap;
  uint64_t bitmap[(1u << DC_LOW) / 64];
  size_t count[DC_LANES + 1][DC_BUCKETS + DC_PAD];   /* lane DC_LANES: the tail */
  size_t start[DC_BUCKETS + 1];
};

/* Monotone key with -0 folded onto +0 (all other bit patterns, NaNs included, kept apart). */
static inline uint32_t dkey(float f) {
  return fkey(f == 0.0f ? 0.0f : f);
}

mopt_distinct *mopt_distinct_new(void) {
  return calloc(1, sizeof(mopt_distinct));
}

void mopt_distinct_free(mopt_distinct *dc) {
  if (!dc) return;
  free(dc->keys);
  free(dc);
}

int mopt_distinct_count(mopt_distinct *dc, const mopt_f32u *x, size_t n, uint64_t *out) {
  *out = 0;
  if (n == 0) return 0;
  if (n > dc->cap) {
    uint32_t *k = realloc(dc->keys, n * sizeof *k);
    if (!k) return MOPT_ENOMEM;
    dc->keys = k;
    dc->cap = n;
  }
  const size_t len = n / DC_LANES, tail = len * DC_LANES;
  memset(dc->count, 0, sizeof dc->count);
  for (size_t j = 0; j < len; j++)
    for (int q = 0; q < DC_LANES; q++) dc->count[q][dkey(x[q * len + j]) >> DC_LOW]++;
  for (size_t i = tail; i < n; i++) dc->count[DC_LANES][dkey(x[i]) >> DC_LOW]++;
  size_t at = 0;                                 /* counts become each lane's write cursor */
  for (size_t b = 0; b < DC_BUCKETS; b++) {
    dc->start[b] = at;
    for (int q = 0; q <= DC_LANES; q++) {
      size_t c = dc->count[q][b];
      dc->count[q][b] = at;
      at += c;
    }
  }
  dc->start[DC_BUCKETS] = at;
  uint32_t *keys = dc->keys;
  for (size_t j = 0; j < len; j++)
    for (int q = 0; q < DC_LANES; q++) {
      uint32_t k = dkey(x[q * len + j]);
      keys[dc->count[q][k >> DC_LOW]++] = k;
    }
  for (size_t i = tail; i < n; i++) {
    uint32_t k = dkey(x[i]);
    keys[dc->count[DC_LANES][k >> DC_LOW]++] = k;
  }
  const uint32_t low = (1u << DC_LOW) - 1;
  uint64_t d = 0;
  for (size_t b = 0; b < DC_BUCKETS; b++) {
    size_t lo = dc->start[b], hi = dc->start[b + 1];
    for (size_t i = lo; i < hi; i++) {
      uint32_t k = keys[i] & low;
      uint64_t bit = 1ull << (k & 63), *word = &dc->bitmap[k >> 6];
      d += !(*word & bit);
      *word |= bit;
    }
    if (hi - lo > sizeof dc->bitmap / 64) memset(dc->bitmap, 0, sizeof dc->bitmap);
    else
      for (size_t i = lo; i < hi; i++) dc->bitmap[(keys[i] & low) >> 6] = 0;
  }
  *out = d;
  return 0;
}

uint64_t mopt_count_distinct(const mopt_f32u *x, size_t n) {
  if (n == 0) return 0;
  mopt_distinct *dc = mopt_distinct_new();
  uint64_t d = 0;
  if (dc && mopt_distinct_count(dc, x, n, &d) != 0) d = 0;
  mopt_distinct_free(dc);
  return d;
}

double mopt_sparsity(const float *x, size_t n) {
  if (n == 0) return 0.0;
  size_t z = 0;
  for (size_t i = 0; i < n; i++) z += x[i] == 0.0f;
  return (double)z / (double)n;
}

double mopt_snr_db(const mopt_f32u *x, const float *y, size_t n, double *max_abs_err) {
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
