/* cluster.c — 1-D k-means (weight sharing / palettization) on sorted data with prefix sums.
 *
 * The data is sorted once (radix sort); prefix sums of v and v*v are kept at every 32nd index,
 * so any segment's mean and squared-error cost take fewer than 64 additions. Because centroids
 * in 1-D partition the sorted data into contiguous runs split at midpoints, one Lloyd iteration
 * is k binary searches (O(k log n)); kmeans++ keeps per-centre segment bounds and costs, so a
 * D^2 sample is a walk over k cached costs plus one binary search, and a candidate re-costs only
 * its two neighbours. Final assignment is a branch-free search over the k - 1 midpoints.
 * Trade-off: one sorted copy of the data (memory) buys loops that never touch n after the sort;
 * segment costs carry the rounding of double prefix sums (relative error ~1e-16 of the sums).
 */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mopt.h"

void mopt_km_data_free(mopt_km_data *d) {
  free(d->v);
  free(d->b1);
  free(d->b2);
  memset(d, 0, sizeof *d);
}

int mopt_km_data_init(mopt_km_data *d, const float *x, size_t n, size_t stride, int skip_zeros) {
  memset(d, 0, sizeof *d);
  float *a = malloc((n ? n : 1) * sizeof *a);
  if (!a) return MOPT_ENOMEM;
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    float v = x[i * stride];
    if (v != v) continue;                         /* NaN carries no distance */
    if (skip_zeros && v == 0.0f) continue;
    a[m++] = v == 0.0f ? 0.0f : v;
  }
  float *t = malloc((m ? m : 1) * sizeof *t);
  if (!t) { free(a); return MOPT_ENOMEM; }
  mopt_sort_floats(a, m, t);
  free(t);
  size_t nb = m / MOPT_KM_BLOCK + 1;
  d->b1 = malloc(nb * sizeof *d->b1);
  d->b2 = malloc(nb * sizeof *d->b2);
  if (!d->b1 || !d->b2) { free(a); mopt_km_data_free(d); return MOPT_ENOMEM; }
  double s1 = 0.0, s2 = 0.0;
  size_t u = 0;
  for (size_t i = 0; i < m; i++) {
    if (i % MOPT_KM_BLOCK == 0) { d->b1[i / MOPT_KM_BLOCK] = s1; d->b2[i / MOPT_KM_BLOCK] = s2; }
    double v = a[i];
    s1 += v;
    s2 += v * v;
    u += (i == 0 || a[i] != a[i - 1]);
  }
  if (m % MOPT_KM_BLOCK == 0) { d->b1[m / MOPT_KM_BLOCK] = s1; d->b2[m / MOPT_KM_BLOCK] = s2; }
  d->v = a;
  d->n = m;
  d->distinct = u;
  return 0;
}

/* Prefix sums of v and v*v over [0, i). */
static void prefix(const mopt_km_data *d, size_t i, double *p1, double *p2) {
  size_t b = i / MOPT_KM_BLOCK;
  double a1 = d->b1[b], a2 = d->b2[b];
  for (size_t j = b * MOPT_KM_BLOCK; j < i; j++) {
    double v = d->v[j];
    a1 += v;
    a2 += v * v;
  }
  *p1 = a1;
  *p2 = a2;
}

/* Sum of v over [lo, hi). */
static double seg_sum(const mopt_km_data *d, size_t lo, size_t hi) {
  double a1, a2, b1, b2;
  prefix(d, lo, &a1, &a2);
  prefix(d, hi, &b1, &b2);
  return b1 - a1;
}

/* Squared-distance cost of values [lo, hi) to centre c. */
static double seg_cost(const mopt_km_data *d, size_t lo, size_t hi, double c) {
  if (hi <= lo) return 0.0;
  double a1, a2, b1, b2;
  prefix(d, lo, &a1, &a2);
  prefix(d, hi, &b1, &b2);
  double s0 = (double)(hi - lo), s1 = b1 - a1, s2 = b2 - a2;
  double r = s2 - 2.0 * c * s1 + c * c * s0;
  return r > 0.0 ? r : 0.0;
}

/* First index in [0, n) whose value is > t (values ascending). */
static size_t upper_bound_v(const mopt_km_data *d, double t) {
  size_t lo = 0, hi = d->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if ((double)d->v[mid] <= t) lo = mid + 1; else hi = mid;
  }
  return lo;
}

/* Boundaries b[0..k] of the nearest-centre partition for ascending centres (tie → lower). */
static void bounds_of(const mopt_km_data *d, const float *cent, size_t k, size_t *b) {
  b[0] = 0;
  for (size_t j = 0; j + 1 < k; j++) {
    double mid = ((double)cent[j] + (double)cent[j + 1]) * 0.5;
    size_t ub = upper_bound_v(d, mid);
    b[j + 1] = ub < b[j] ? b[j] : ub;
  }
  b[k] = d->n;
}

static double potential(const mopt_km_data *d, const float *cent, size_t k, size_t *b) {
  bounds_of(d, cent, k, b);
  double p = 0.0;
  for (size_t j = 0; j < k; j++) p += seg_cost(d, b[j], b[j + 1], cent[j]);
  return p;
}

/* Element rank (a position in [0, n), fractional allowed) → index. */
static size_t index_of_rank(const mopt_km_data *d, double r) {
  if (!(r > 0.0)) return 0;
  size_t i = (size_t)r;
  return i < d->n ? i : d->n - 1;
}

static void insert_sorted(float *cent, size_t *m, float v) {
  size_t i = *m;
  while (i > 0 && cent[i - 1] > v) { cent[i] = cent[i - 1]; i--; }
  cent[i] = v;
  (*m)++;
}

static int has_value(const float *cent, size_t m, float v) {
  for (size_t i = 0; i < m; i++)
    if (cent[i] == v) return 1;
  return 0;
}

static size_t clampz(size_t v, size_t lo, size_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Adds D^2-sampled centres (greedy: best of 2 + ln k candidates, as kmeans++ usually does)
 * until m == k or every value is a centre. Segment bounds and costs are kept per centre, and a
 * candidate only changes the two segments around it, so a candidate costs O(log n) and the
 * whole fill O(k (k + trials log n)). */
static int fill_kmeanspp(const mopt_km_data *d, size_t k, uint64_t *rng, float *cent, size_t *m) {
  if (*m == 0 || *m >= k) return 0;
  size_t *b = malloc((k + 2) * sizeof *b);
  double *sc = malloc((k + 1) * sizeof *sc);
  if (!b || !sc) { free(b); free(sc); return MOPT_ENOMEM; }
  bounds_of(d, cent, *m, b);
  for (size_t j = 0; j < *m; j++) sc[j] = seg_cost(d, b[j], b[j + 1], cent[j]);
  int trials = 2 + (int)log((double)k);
  while (*m < k) {
    size_t mm = *m;
    double pot = 0.0;
    for (size_t j = 0; j < mm; j++) pot += sc[j];
    if (!(pot > 0.0)) break;
    float best_v = 0.0f;
    double best_p = INFINITY;
    size_t best_pos = 0, best_m1 = 0, best_m2 = 0;
    double best_c[3] = {0, 0, 0};
    for (int t = 0; t < trials; t++) {
      /* D^2 sample: walk the cached segment costs, then search inside the segment */
      double target = mopt_rng_unit(rng) * pot, cum = 0.0;
      size_t seg = mm;
      for (size_t j = 0; j < mm; j++) {
        if (cum + sc[j] > target && b[j + 1] > b[j]) { seg = j; break; }
        cum += sc[j];
      }
      if (seg == mm) continue;
      double rem = target - cum;
      size_t lo = b[seg], hi = b[seg + 1] - 1;
      while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (seg_cost(d, b[seg], mid + 1, cent[seg]) > rem) hi = mid; else lo = mid + 1;
      }
      float v = d->v[lo];
      size_t p = 0, h = mm;                      /* centres below v */
      while (p < h) {
        size_t mid = p + (h - p) / 2;
        if (cent[mid] < v) p = mid + 1; else h = mid;
      }
      if (p < mm && cent[p] == v) continue;      /* already a centre */
      size_t s0 = p > 0 ? b[p - 1] : 0, e0 = p < mm ? b[p + 1] : d->n;
      double old = (p > 0 ? sc[p - 1] : 0.0) + (p < mm ? sc[p] : 0.0);
      size_t m1 = p > 0 ? clampz(upper_bound_v(d, ((double)cent[p - 1] + v) * 0.5), s0, e0) : s0;
      size_t m2 = p < mm ? clampz(upper_bound_v(d, ((double)v + cent[p]) * 0.5), m1, e0) : e0;
      double c0 = p > 0 ? seg_cost(d, s0, m1, cent[p - 1]) : 0.0;
      double c1 = seg_cost(d, m1, m2, v);
      double c2 = p < mm ? seg_cost(d, m2, e0, cent[p]) : 0.0;
      double np = pot - old + c0 + c1 + c2;
      if (np < best_p) {
        best_p = np; best_v = v; best_pos = p; best_m1 = m1; best_m2 = m2;
        best_c[0] = c0; best_c[1] = c1; best_c[2] = c2;
      }
    }
    if (best_p == INFINITY) break;             /* only zero-cost picks: nothing left to split */
    size_t p = best_pos;
    memmove(cent + p + 1, cent + p, (mm - p) * sizeof *cent);
    cent[p] = best_v;
    /* bounds: b[p] = m1 (start of the new segment), b[p + 1] = m2, the rest shift by one */
    memmove(b + p + 2, b + p + 1, (mm - p) * sizeof *b);
    b[p] = best_m1;
    b[p + 1] = best_m2;
    memmove(sc + p + 1, sc + p, (mm - p) * sizeof *sc);
    if (p > 0) sc[p - 1] = best_c[0];
    sc[p] = best_c[1];
    if (p < mm) sc[p + 1] = best_c[2];
    *m = mm + 1;
  }
  free(b);
  free(sc);
  return 0;
}

size_t mopt_km_init_centroids(const mopt_km_data *d, size_t k, mopt_km_init init, uint64_t seed,
                              float *cent) {
  if (d->n == 0 || k == 0) return 0;
  if (d->distinct <= k) {
    size_t m = 0;
    for (size_t i = 0; i < d->n; i++)
      if (i == 0 || d->v[i] != d->v[i - 1]) cent[m++] = d->v[i];
    return m;
  }
  uint64_t rng = seed ^ 0x6d6f70742d6b6dull;
  size_t m = 0;
  switch (init) {
  case MOPT_KM_LINEAR: {
    double lo = d->v[0], hi = d->v[d->n - 1];
    for (size_t j = 0; j < k; j++) {
      float v = (float)(k == 1 ? lo : lo + (hi - lo) * (double)j / (double)(k - 1));
      if (!has_value(cent, m, v)) insert_sorted(cent, &m, v);
    }
    break;
  }
  case MOPT_KM_DENSITY:
    for (size_t j = 0; j < k; j++) {
      double r = ((double)j + 0.5) * (double)d->n / (double)k;
      float v = d->v[index_of_rank(d, r)];
      if (!has_value(cent, m, v)) insert_sorted(cent, &m, v);
    }
    break;
  case MOPT_KM_RANDOM:
    for (size_t tries = 0; m < k && tries < 8 * k; tries++) {
      float v = d->v[index_of_rank(d, mopt_rng_unit(&rng) * (double)d->n)];
      if (!has_value(cent, m, v)) insert_sorted(cent, &m, v);
    }
    break;
  case MOPT_KM_KMEANSPP:
  default:
    cent[m++] = d->v[index_of_rank(d, mopt_rng_unit(&rng) * (double)d->n)];
    break;
  }
  if (m < k && fill_kmeanspp(d, k, &rng, cent, &m) != 0) return m;
  return m;
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

double mopt_kmeans_fit(const mopt_km_data *d, float *cent, size_t k, int max_iter) {
  if (k == 0 || d->n == 0) return 0.0;
  size_t *b = malloc((k + 1) * sizeof *b), *pb = malloc((k + 1) * sizeof *pb);
  if (!b || !pb) { free(b); free(pb); return -1.0; }
  for (int it = 0; it < max_iter; it++) {
    bounds_of(d, cent, k, b);
    if (it > 0 && memcmp(b, pb, (k + 1) * sizeof *b) == 0) break;
    int sorted = 1;
    for (size_t j = 0; j < k; j++) {
      double s0 = (double)(b[j + 1] - b[j]);
      if (s0 > 0) cent[j] = (float)(seg_sum(d, b[j], b[j + 1]) / s0);
      if (j > 0 && cent[j] < cent[j - 1]) sorted = 0;
    }
    if (!sorted) qsort(cent, k, sizeof *cent, cmp_float);
    memcpy(pb, b, (k + 1) * sizeof *b);
  }
  double p = potential(d, cent, k, b);
  free(b);
  free(pb);
  return p;
}

uint8_t mopt_km_assign1_ref(const float *cent, size_t k, float x) {
  size_t best = 0;
  double bd = fabs((double)x - cent[0]);
  for (size_t j = 1; j < k; j++) {
    double dd = fabs((double)x - cent[j]);
    if (dd < bd) { bd = dd; best = j; }
  }
  return (uint8_t)best;
}

uint8_t mopt_km_assign1(const float *cent, size_t k, float x) {
  size_t lo = 0, hi = k;                      /* first centre >= x */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (cent[mid] < x) lo = mid + 1; else hi = mid;
  }
  if (lo == k) lo = k - 1;
  /* the nearest is lo or its predecessor; equal values before lo win ties (lower index) */
  if (lo > 0 && fabs((double)x - cent[lo - 1]) <= fabs((double)x - cent[lo])) lo--;
  while (lo > 0 && cent[lo - 1] == cent[lo]) lo--;
  return (uint8_t)lo;
}

void mopt_km_assign_many(const float *cent, size_t k, const float *x, size_t n, size_t stride,
                         uint8_t *idx) {
  /* mids[j] between cent[j] and cent[j+1]; x goes right of mid j iff x > mids[j]; padded to a
   * power of two with +inf so the search is a fixed number of branch-free steps */
  double mids[256];
  size_t p2 = 1;
  while (p2 < k) p2 <<= 1;
  for (size_t j = 0; j < p2; j++)
    mids[j] = j + 1 < k ? ((double)cent[j] + (double)cent[j + 1]) * 0.5 : INFINITY;
  for (size_t i = 0; i < n; i++) {
    double v = x[i * stride];
    size_t pos = 0;                           /* count of mids < v, by halving */
    for (size_t h = p2 >> 1; h > 0; h >>= 1) pos += (mids[pos + h - 1] < v) ? h : 0;
    if (pos + 1 < p2 && mids[pos] < v) pos++;
    if (pos >= k) pos = k - 1;
    while (pos > 0 && cent[pos - 1] == cent[pos]) pos--;
    idx[i * stride] = (uint8_t)pos;
  }
}

double mopt_kmeans_fit_ref(const float *x, size_t n, float *cent, size_t k, int max_iter) {
  uint8_t *as = malloc((n ? n : 1));
  double *sum = malloc(k * sizeof *sum);
  size_t *cnt = malloc(k * sizeof *cnt);
  if (!as || !sum || !cnt) { free(as); free(sum); free(cnt); return -1.0; }
  for (int it = 0; it < max_iter; it++) {
    int changed = it == 0;
    for (size_t i = 0; i < n; i++) {
      uint8_t a = mopt_km_assign1_ref(cent, k, x[i]);
      if (it == 0 || a != as[i]) changed = 1;
      as[i] = a;
    }
    if (!changed) break;
    memset(sum, 0, k * sizeof *sum);
    memset(cnt, 0, k * sizeof *cnt);
    for (size_t i = 0; i < n; i++) { sum[as[i]] += x[i]; cnt[as[i]]++; }
    for (size_t j = 0; j < k; j++)
      if (cnt[j]) cent[j] = (float)(sum[j] / (double)cnt[j]);
  }
  double in = 0.0;
  for (size_t i = 0; i < n; i++) {
    double dd = (double)x[i] - cent[mopt_km_assign1_ref(cent, k, x[i])];
    in += dd * dd;
  }
  free(as);
  free(sum);
  free(cnt);
  return in;
}

int mopt_cluster_values(const float *x, size_t n, size_t stride, int32_t k, mopt_km_init init,
                        uint64_t seed, int keep_zero, float *table, uint8_t *idx) {
  if (k < 2 || k > 256) return MOPT_EINVAL;
  mopt_km_data d;
  int rc = mopt_km_data_init(&d, x, n, stride, keep_zero);
  if (rc) return rc;
  size_t kk = (size_t)(keep_zero ? k - 1 : k);
  float cent[256];
  size_t m = mopt_km_init_centroids(&d, kk, init, seed, cent);
  if (m > 0) mopt_kmeans_fit(&d, cent, m, 300);
  mopt_km_data_free(&d);
  /* the table: centres (+ an exact 0 when zeros are kept), ascending, padded */
  size_t nt = 0, zpos = (size_t)-1;
  for (size_t j = 0; j < m; j++) table[nt++] = cent[j];
  if (keep_zero || m == 0) {
    size_t p = 0;
    while (p < nt && table[p] < 0.0f) p++;
    memmove(table + p + 1, table + p, (nt - p) * sizeof *table);
    table[p] = 0.0f;
    nt++;
    zpos = p;
  }
  for (size_t j = nt; j < (size_t)k; j++) table[j] = table[nt - 1];
  if (zpos == (size_t)-1) {
    mopt_km_assign_many(table, nt, x, n, stride, idx);
  } else {
    if (m > 0) mopt_km_assign_many(cent, m, x, n, stride, idx);
    for (size_t i = 0; i < n; i++) {
      float v = x[i * stride];
      if (v == 0.0f || m == 0 || v != v) idx[i * stride] = (uint8_t)zpos;
      else if (idx[i * stride] >= zpos) idx[i * stride]++;   /* non-zeros skip the zero entry */
    }
  }
  return 0;
}
