/* prune.c — magnitude pruning kernels: unstructured (per tensor or one global threshold found by
 * radix histograms), N:M along the reduction axis with its checker, RxC blocks, whole channels.
 *
 * Trade-off: selection is exact (exactly round(s * n) zeros, ties broken by index) rather than
 * "everything below an approximate threshold", so sparsity is what was asked and output is
 * deterministic; it costs a second histogram pass, never a sort of the data.
 */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mopt.h"

uint32_t mopt_abs_key(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u & 0x7fffffffu;
}

void mopt_abs_hist_hi(const float *x, size_t n, uint64_t *hist) {
  for (size_t i = 0; i < n; i++) hist[mopt_abs_key(x[i]) >> 16]++;
}

void mopt_abs_hist_lo(const float *x, size_t n, uint32_t top, uint64_t *hist) {
  for (size_t i = 0; i < n; i++) {
    uint32_t k = mopt_abs_key(x[i]);
    if ((k >> 16) == top) hist[k & 0xffffu]++;
  }
}

uint32_t mopt_kth_pick(const uint64_t *hist, uint64_t k, uint64_t *below) {
  uint64_t sum = 0;
  for (uint32_t b = 0; b < 65536; b++) {
    if (sum + hist[b] > k) {
      if (below) *below = sum;
      return b;
    }
    sum += hist[b];
  }
  if (below) *below = sum;
  return 65535;
}

uint32_t mopt_kth_abs_key(const mopt_farray *arrs, size_t n_arrs, uint64_t k) {
  uint64_t *h = calloc(65536, sizeof *h);
  if (!h) return 0xffffffffu;
  for (size_t a = 0; a < n_arrs; a++) mopt_abs_hist_hi(arrs[a].x, arrs[a].n, h);
  uint64_t below = 0;
  uint32_t top = mopt_kth_pick(h, k, &below);
  memset(h, 0, 65536 * sizeof *h);
  for (size_t a = 0; a < n_arrs; a++) mopt_abs_hist_lo(arrs[a].x, arrs[a].n, top, h);
  uint32_t low = mopt_kth_pick(h, k - below, NULL);
  free(h);
  return top << 16 | low;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

uint32_t mopt_kth_abs_key_ref(const mopt_farray *arrs, size_t n_arrs, uint64_t k) {
  size_t tot = 0;
  for (size_t a = 0; a < n_arrs; a++) tot += arrs[a].n;
  uint32_t *keys = malloc((tot ? tot : 1) * sizeof *keys);
  if (!keys) return 0xffffffffu;
  size_t m = 0;
  for (size_t a = 0; a < n_arrs; a++)
    for (size_t i = 0; i < arrs[a].n; i++) keys[m++] = mopt_abs_key(arrs[a].x[i]);
  qsort(keys, tot, sizeof *keys, cmp_u32);
  uint32_t r = keys[k];
  free(keys);
  return r;
}

size_t mopt_prune_threshold(float *x, size_t n, uint32_t thr, uint64_t *ties_left) {
  size_t z = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t k = mopt_abs_key(x[i]);
    if (k < thr || (k == thr && *ties_left > 0)) {
      if (k == thr) (*ties_left)--;
      x[i] = 0.0f;
      z++;
    }
  }
  return z;
}

static size_t target_count(double sparsity, size_t n) {
  if (!(sparsity > 0.0)) return 0;
  double t = nearbyint(sparsity * (double)n);
  if (t >= (double)n) return n;
  return (size_t)t;
}

size_t mopt_prune_unstructured(float *x, size_t n, double sparsity, uint8_t *keep) {
  size_t nz = target_count(sparsity, n);
  if (keep) memset(keep, 1, n);
  if (nz == 0) return 0;
  uint64_t *h = calloc(65536, sizeof *h);
  if (!h) return 0;
  mopt_abs_hist_hi(x, n, h);
  uint64_t below_hi = 0, below_lo = 0;
  uint32_t top = mopt_kth_pick(h, nz - 1, &below_hi);
  memset(h, 0, 65536 * sizeof *h);
  mopt_abs_hist_lo(x, n, top, h);
  uint32_t low = mopt_kth_pick(h, nz - 1 - below_hi, &below_lo);
  free(h);
  uint32_t thr = top << 16 | low;
  uint64_t ties = nz - (below_hi + below_lo);   /* keys == thr to zero, in index order */
  size_t z = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t k = mopt_abs_key(x[i]);
    if (k < thr || (k == thr && ties > 0)) {
      if (k == thr) ties--;
      x[i] = 0.0f;
      if (keep) keep[i] = 0;
      z++;
    }
  }
  return z;
}

typedef struct { uint32_t key; uint32_t pad; size_t idx; } key_idx;
static int cmp_key_idx(const void *a, const void *b) {
  const key_idx *x = a, *y = b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

size_t mopt_prune_unstructured_ref(float *x, size_t n, double sparsity, uint8_t *keep) {
  size_t nz = target_count(sparsity, n);
  if (keep) memset(keep, 1, n);
  key_idx *ki = malloc((n ? n : 1) * sizeof *ki);
  if (!ki) return 0;
  for (size_t i = 0; i < n; i++) ki[i] = (key_idx){mopt_abs_key(x[i]), 0, i};
  qsort(ki, n, sizeof *ki, cmp_key_idx);
  for (size_t j = 0; j < nz; j++) {
    x[ki[j].idx] = 0.0f;
    if (keep) keep[ki[j].idx] = 0;
  }
  free(ki);
  return nz;
}

/* ---- N:M ---- */
size_t mopt_prune_nm(float *x, mopt_axis_view v, int32_t n, int32_t m) {
  if (m < 1 || n < 0 || m > 256) return 0;
  if (n >= m) return 0;
  size_t z = 0;
  uint32_t key[256];
  for (int64_t o = 0; o < v.outer; o++)
    for (int64_t g0 = 0; g0 < v.dim; g0 += m) {
      int64_t len = v.dim - g0 < m ? v.dim - g0 : m;
      for (int64_t i = 0; i < v.inner; i++) {
        float *base = x + (o * v.dim + g0) * v.inner + i;
        for (int64_t j = 0; j < len; j++) key[j] = mopt_abs_key(base[j * v.inner]);
        /* rank of j = number of elements that beat it (larger key, or equal and earlier) */
        for (int64_t j = 0; j < len; j++) {
          int64_t rank = 0;
          for (int64_t t = 0; t < len; t++)
            rank += key[t] > key[j] || (key[t] == key[j] && t < j);
          if (rank >= n) {
            base[j * v.inner] = 0.0f;
            z++;
          }
        }
      }
    }
  return z;
}

size_t mopt_prune_nm_ref(float *x, mopt_axis_view v, int32_t n, int32_t m) {
  if (m < 1 || n < 0 || n >= m) return 0;
  size_t z = 0;
  key_idx grp[256];
  for (int64_t o = 0; o < v.outer; o++)
    for (int64_t i = 0; i < v.inner; i++)
      for (int64_t g0 = 0; g0 < v.dim; g0 += m) {
        int64_t len = 0;
        for (int64_t d = g0; d < v.dim && d < g0 + m; d++, len++) {
          size_t e = (size_t)((o * v.dim + d) * v.inner + i);
          /* sort by descending magnitude: invert the key, index ascending breaks ties */
          grp[len] = (key_idx){~mopt_abs_key(x[e]), 0, e};
        }
        qsort(grp, (size_t)len, sizeof grp[0], cmp_key_idx);
        for (int64_t j = n; j < len; j++) {
          x[grp[j].idx] = 0.0f;
          z++;
        }
      }
  return z;
}

int mopt_nm_check(const float *x, mopt_axis_view v, int32_t n, int32_t m) {
  if (m < 1) return 0;
  for (int64_t o = 0; o < v.outer; o++)
    for (int64_t i = 0; i < v.inner; i++)
      for (int64_t g0 = 0; g0 < v.dim; g0 += m) {
        int32_t nzc = 0;
        for (int64_t d = g0; d < v.dim && d < g0 + m; d++)
          nzc += x[(o * v.dim + d) * v.inner + i] != 0.0f;
        if (nzc > n) return 0;
      }
  return 1;
}

/* ---- blocks and channels: score, order, zero the lowest ---- */
typedef struct { double score; size_t idx; } score_idx;
static int cmp_score(const void *a, const void *b) {
  const score_idx *x = a, *y = b;
  if (x->score != y->score) return x->score < y->score ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

size_t mopt_prune_blocks(float *x, int64_t rows, int64_t cols, int32_t br, int32_t bc,
                         double sparsity) {
  if (br < 1 || bc < 1 || rows < 1 || cols < 1) return 0;
  int64_t nbr = (rows + br - 1) / br, nbc = (cols + bc - 1) / bc;
  size_t nb = (size_t)(nbr * nbc);
  size_t nz = target_count(sparsity, nb);
  if (nz == 0) return 0;
  score_idx *s = malloc(nb * sizeof *s);
  if (!s) return 0;
  for (int64_t a = 0; a < nbr; a++)
    for (int64_t b = 0; b < nbc; b++) {
      double sc = 0.0;
      for (int64_t r = a * br; r < rows && r < (a + 1) * br; r++)
        for (int64_t c = b * bc; c < cols && c < (b + 1) * bc; c++) sc += fabs(x[r * cols + c]);
      s[a * nbc + b] = (score_idx){sc, (size_t)(a * nbc + b)};
    }
  qsort(s, nb, sizeof *s, cmp_score);
  for (size_t j = 0; j < nz; j++) {
    int64_t a = (int64_t)(s[j].idx / (size_t)nbc), b = (int64_t)(s[j].idx % (size_t)nbc);
    for (int64_t r = a * br; r < rows && r < (a + 1) * br; r++)
      for (int64_t c = b * bc; c < cols && c < (b + 1) * bc; c++) x[r * cols + c] = 0.0f;
  }
  free(s);
  return nz;
}

size_t mopt_prune_channels(float *x, mopt_axis_view v, int32_t norm, double sparsity) {
  size_t nc = (size_t)v.dim;
  size_t nz = target_count(sparsity, nc);
  if (nz == 0) return 0;
  score_idx *s = malloc(nc * sizeof *s);
  if (!s) return 0;
  for (size_t d = 0; d < nc; d++) s[d] = (score_idx){0.0, d};
  for (int64_t o = 0; o < v.outer; o++)
    for (int64_t d = 0; d < v.dim; d++) {
      const float *p = x + (o * v.dim + d) * v.inner;
      double acc = 0.0;
      for (int64_t i = 0; i < v.inner; i++) acc += norm == 1 ? fabs(p[i]) : (double)p[i] * p[i];
      s[d].score += acc;
    }
  qsort(s, nc, sizeof *s, cmp_score);
  for (size_t j = 0; j < nz; j++)
    for (int64_t o = 0; o < v.outer; o++)
      memset(x + (o * v.dim + (int64_t)s[j].idx) * v.inner, 0, (size_t)v.inner * sizeof *x);
  free(s);
  return nz;
}
