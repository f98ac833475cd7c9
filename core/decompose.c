/* decompose.c — truncated SVD (LAPACK sgesdd via LAPACKE) for low-rank factorization of 2-D
 * MatMul/Gemm weights, with the rank chosen by kept spectral energy or fixed.
 *
 * Trade-off: a full thin SVD from a well-kept library (O(r c min(r,c))) instead of a randomized
 * or hand-written one: exact and robust, slower on very large matrices; singular values go into
 * the left factor so the right factor is orthonormal rows.
 */
#include "kernels.h"

#include <lapacke.h>
#include <stdlib.h>
#include <string.h>

#include "mopt.h"

int64_t mopt_svd_rank(const float *s, size_t n, double energy, int32_t fixed_rank) {
  if (n == 0) return 0;
  if (fixed_rank > 0) return (size_t)fixed_rank < n ? fixed_rank : (int64_t)n;
  double tot = 0.0;
  for (size_t i = 0; i < n; i++) tot += (double)s[i] * s[i];
  if (!(tot > 0.0)) return 1;
  double acc = 0.0;
  for (size_t i = 0; i < n; i++) {
    acc += (double)s[i] * s[i];
    if (acc >= energy * tot * (1.0 - 1e-12)) return (int64_t)i + 1;
  }
  return (int64_t)n;
}

int mopt_svd_lowrank(const float *w, int64_t r, int64_t c, double energy, int32_t fixed_rank,
                     int64_t *rank_out, float **a, float **b) {
  *a = *b = NULL;
  *rank_out = 0;
  if (r < 1 || c < 1) return MOPT_EINVAL;
  int64_t mn = r < c ? r : c;
  if (fixed_rank > 0 && (int64_t)fixed_rank * (r + c) >= r * c) return 1;
  float *work = malloc((size_t)(r * c) * sizeof *work);
  float *s = malloc((size_t)mn * sizeof *s);
  float *u = malloc((size_t)(r * mn) * sizeof *u);
  float *vt = malloc((size_t)(mn * c) * sizeof *vt);
  if (!work || !s || !u || !vt) { free(work); free(s); free(u); free(vt); return MOPT_ENOMEM; }
  memcpy(work, w, (size_t)(r * c) * sizeof *work);
  lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)r, (lapack_int)c, work,
                                   (lapack_int)c, s, u, (lapack_int)mn, vt, (lapack_int)c);
  free(work);
  if (info != 0) { free(s); free(u); free(vt); return MOPT_EINTERNAL; }
  int64_t k = mopt_svd_rank(s, (size_t)mn, energy, fixed_rank);
  if (k * (r + c) >= r * c) { free(s); free(u); free(vt); return 1; }
  float *fa = malloc((size_t)(r * k) * sizeof *fa), *fb = malloc((size_t)(k * c) * sizeof *fb);
  if (!fa || !fb) { free(fa); free(fb); free(s); free(u); free(vt); return MOPT_ENOMEM; }
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < k; j++) fa[i * k + j] = u[i * mn + j] * s[j];
  memcpy(fb, vt, (size_t)(k * c) * sizeof *fb);
  free(s);
  free(u);
  free(vt);
  *a = fa;
  *b = fb;
  *rank_out = k;
  return 0;
}
