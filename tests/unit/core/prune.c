/* tests/unit/core/prune.c — pruning kernels: exact sparsity, fast vs reference (unstructured,
 * N:M, k-th key selection), the N:M checker, global vs per-tensor thresholds, blocks, channels. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "ktest.h"
#include "mopt.h"

static size_t zeros(const float *x, size_t n) {
  size_t z = 0;
  for (size_t i = 0; i < n; i++) z += x[i] == 0.0f;
  return z;
}

static void unstructured_matches_reference(void **st) {
  (void)st;
  const size_t n = 10007;
  float *x = malloc(n * sizeof *x), *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
  uint8_t *ka = malloc(n), *kb = malloc(n);
  kt_gauss(x, n, 9, 1.0);
  for (size_t i = 0; i < n; i += 50) x[i] = 0.25f;      /* many ties */
  for (size_t i = 1; i < n; i += 70) x[i] = -0.25f;
  const double sp[] = {0.0, 0.1, 0.5, 0.73, 0.9, 0.999, 1.0};
  for (size_t s = 0; s < sizeof sp / sizeof sp[0]; s++) {
    memcpy(a, x, n * sizeof *x);
    memcpy(b, x, n * sizeof *x);
    size_t za = mopt_prune_unstructured(a, n, sp[s], ka);
    size_t zb = mopt_prune_unstructured_ref(b, n, sp[s], kb);
    assert_int_equal(za, zb);
    assert_int_equal(za, (size_t)nearbyint(sp[s] * n));
    assert_memory_equal(a, b, n * sizeof *a);
    assert_memory_equal(ka, kb, n);
    assert_int_equal(zeros(a, n), za);
    /* magnitude order: every kept |x| >= every pruned |x| */
    float maxp = 0.0f, mink = INFINITY;
    for (size_t i = 0; i < n; i++) {
      if (!ka[i]) maxp = fmaxf(maxp, fabsf(x[i]));
      else mink = fminf(mink, fabsf(x[i]));
    }
    if (za > 0 && za < n) assert_true(maxp <= mink);
  }
  free(x); free(a); free(b); free(ka); free(kb);
}

static void kth_key_matches_sort(void **st) {
  (void)st;
  float x1[3000], x2[500], x3[1];
  kt_gauss(x1, 3000, 1, 1.0);
  kt_gauss(x2, 500, 2, 100.0);
  x3[0] = 0.0f;
  mopt_farray arr[3] = {{x1, 3000}, {x2, 500}, {x3, 1}};
  for (uint64_t k = 0; k < 3501; k += 97)
    assert_int_equal(mopt_kth_abs_key(arr, 3, k), mopt_kth_abs_key_ref(arr, 3, k));
  assert_int_equal(mopt_kth_abs_key(arr, 3, 3500), mopt_kth_abs_key_ref(arr, 3, 3500));
}

static void global_vs_per_tensor(void **st) {
  (void)st;
  /* a small-scale tensor and a large-scale one: a global threshold prunes the small one far
   * more, while the total sparsity matches the target exactly; per tensor gives each 50%. */
  enum { NA = 4000, NB = 6000 };
  float *a = malloc(NA * sizeof *a), *b = malloc(NB * sizeof *b);
  kt_gauss(a, NA, 21, 0.01);
  kt_gauss(b, NB, 22, 1.0);
  mopt_farray arr[2] = {{a, NA}, {b, NB}};
  uint64_t total = NA + NB, nz = (uint64_t)nearbyint(0.5 * (double)total);
  uint64_t *h = calloc(65536, sizeof *h);
  mopt_abs_hist_hi(a, NA, h);
  mopt_abs_hist_hi(b, NB, h);
  uint64_t below_hi = 0, below_lo = 0;
  uint32_t top = mopt_kth_pick(h, nz - 1, &below_hi);
  memset(h, 0, 65536 * sizeof *h);
  mopt_abs_hist_lo(a, NA, top, h);
  mopt_abs_hist_lo(b, NB, top, h);
  uint32_t low = mopt_kth_pick(h, nz - 1 - below_hi, &below_lo);
  uint32_t thr = top << 16 | low;
  assert_int_equal(thr, mopt_kth_abs_key_ref(arr, 2, nz - 1));
  uint64_t ties = nz - below_hi - below_lo;
  size_t za = mopt_prune_threshold(a, NA, thr, &ties);
  size_t zb = mopt_prune_threshold(b, NB, thr, &ties);
  assert_int_equal(za + zb, nz);
  assert_int_equal(ties, 0);
  assert_true((double)za / NA > 0.95);           /* the small tensor is almost all gone */
  assert_true((double)zb / NB < 0.2);
  kt_gauss(a, NA, 21, 0.01);
  kt_gauss(b, NB, 22, 1.0);
  assert_int_equal(mopt_prune_unstructured(a, NA, 0.5, NULL), NA / 2);
  assert_int_equal(mopt_prune_unstructured(b, NB, 0.5, NULL), NB / 2);
  assert_int_equal(zeros(a, NA), NA / 2);
  free(h); free(a); free(b);
}

static void nm_matches_reference_and_checker(void **st) {
  (void)st;
  const int32_t pats[][2] = {{2, 4}, {4, 8}, {1, 4}, {2, 8}};
  int64_t dims[4] = {6, 22, 3, 3};             /* Conv [O, I, kh, kw]: reduction axis 1, tail group */
  size_t n = 6 * 22 * 9;
  float *x = malloc(n * sizeof *x), *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
  kt_gauss(x, n, 31, 1.0);
  for (size_t i = 0; i < n; i += 13) x[i] = 0.5f;   /* ties */
  mopt_axis_view v = mopt_view_make(dims, 4, 1);
  for (size_t p = 0; p < 4; p++) {
    int32_t N = pats[p][0], M = pats[p][1];
    memcpy(a, x, n * sizeof *x);
    memcpy(b, x, n * sizeof *x);
    assert_false(mopt_nm_check(a, v, N, M));
    size_t za = mopt_prune_nm(a, v, N, M), zb = mopt_prune_nm_ref(b, v, N, M);
    assert_int_equal(za, zb);
    assert_memory_equal(a, b, n * sizeof *a);
    assert_true(mopt_nm_check(a, v, N, M));
    /* full groups keep exactly N: 22 = 5 groups of 4 + a tail of 2 for 2:4 */
    size_t groups_full = (size_t)(22 / M), tail = (size_t)(22 % M);
    size_t expect = (size_t)(6 * 9) * (groups_full * (size_t)(M - N) +
                                       (tail > (size_t)N ? tail - (size_t)N : 0));
    assert_int_equal(za, expect);
    /* the checker sees a single extra non-zero in one group */
    for (size_t i = 0; i < n; i++)
      if (a[i] == 0.0f) { a[i] = 1.0f; break; }
    assert_false(mopt_nm_check(a, v, N, M));
  }
  free(x); free(a); free(b);
}

static void blocks_and_channels(void **st) {
  (void)st;
  enum { R = 16, C = 12 };
  float x[R * C];
  kt_gauss(x, R * C, 44, 1.0);
  size_t zb = mopt_prune_blocks(x, R, C, 4, 1, 0.5);
  assert_int_equal(zb, (R / 4) * C / 2);
  assert_int_equal(zeros(x, R * C), R * C / 2);
  for (int a = 0; a < R / 4; a++)               /* whole 4x1 blocks: all zero or none zero */
    for (int c = 0; c < C; c++) {
      int z = 0;
      for (int r = a * 4; r < a * 4 + 4; r++) z += x[r * C + c] == 0.0f;
      assert_true(z == 0 || z == 4);
    }
  /* channels: output channels of a MatMul B [K=16, N=12] are columns (axis 1) */
  float y[R * C];
  kt_gauss(y, R * C, 45, 1.0);
  for (int r = 0; r < R; r++) y[r * C + 5] *= 0.01f;   /* channel 5 is the weakest */
  int64_t dims[2] = {R, C};
  mopt_axis_view v = mopt_view_make(dims, 2, 1);
  assert_int_equal(mopt_prune_channels(y, v, 2, 0.25), 3);
  int zc = 0;
  for (int c = 0; c < C; c++) {
    int z = 0;
    for (int r = 0; r < R; r++) z += y[r * C + c] == 0.0f;
    assert_true(z == 0 || z == R);
    zc += z == R;
  }
  assert_int_equal(zc, 3);
  assert_true(y[5] == 0.0f);
  assert_int_equal(mopt_prune_channels(y, v, 1, 0.0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(unstructured_matches_reference),
    cmocka_unit_test(kth_key_matches_sort),
    cmocka_unit_test(global_vs_per_tensor),
    cmocka_unit_test(nm_matches_reference_and_checker),
    cmocka_unit_test(blocks_and_channels),
  };
  return cmocka_run_group_tests_name("core/prune", tests, NULL, NULL);
}
