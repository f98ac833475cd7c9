/* tests/unit/core/cluster.c — 1-D k-means: fast assignment vs linear scan, fast Lloyd vs the
 * reference Lloyd on the same init (inertia no worse), determinism per seed, zeros kept as
 * their own centroid, exact results on few distinct values, speed on 1M values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ktest.h"
#include "mopt.h"

static void assign_matches_reference(void **st) {
  (void)st;
  float cent[64], x[5000];
  kt_gauss(cent, 64, 3, 1.0);
  cent[10] = cent[11];                         /* a duplicate centre */
  float t[64];
  mopt_sort_floats(cent, 64, t);
  kt_gauss(x, 5000, 4, 1.3);
  for (int i = 0; i < 64; i++) x[i] = cent[i];  /* exact hits */
  x[64] = (cent[20] + cent[21]) / 2;           /* a (near) midpoint */
  uint8_t many[5000];
  for (size_t k = 1; k <= 64; k = k * 2 + (k == 16)) {   /* powers of two and 33 */
    mopt_km_assign_many(cent, k, x, 5000, 1, many);
    for (int i = 0; i < 5000; i++) {
      uint8_t r = mopt_km_assign1_ref(cent, k, x[i]);
      assert_int_equal(mopt_km_assign1(cent, k, x[i]), r);
      assert_int_equal(many[i], r);
    }
  }
}

static void lloyd_no_worse_than_reference(void **st) {
  (void)st;
  const size_t n = 20000;
  float *x = malloc(n * sizeof *x);
  kt_gauss(x, n, 8, 1.0);
  for (size_t i = 0; i < n; i += 7) x[i] = nearbyintf(x[i] * 8) / 8;   /* repeated values */
  mopt_km_data d;
  assert_int_equal(mopt_km_data_init(&d, x, n, 1, 0), 0);
  assert_int_equal(d.n, n);
  assert_int_equal(d.distinct, mopt_count_distinct(x, n));
  for (size_t i = 1; i < d.n; i++) assert_true(d.v[i - 1] <= d.v[i]);
  const size_t ks[] = {2, 16, 256};
  for (int init = 0; init < 4; init++)
    for (size_t ki = 0; ki < 3; ki++) {
      float c1[256], c2[256];
      size_t m = mopt_km_init_centroids(&d, ks[ki], (mopt_km_init)init, 1234, c1);
      assert_int_equal(m, ks[ki]);
      for (size_t j = 1; j < m; j++) assert_true(c1[j] > c1[j - 1]);
      memcpy(c2, c1, sizeof c1);
      double fast = mopt_kmeans_fit(&d, c1, m, 300);
      double ref = mopt_kmeans_fit_ref(x, n, c2, m, 300);
      assert_true(fast >= 0.0);
      assert_true(fast <= ref * (1.0 + 1e-6) + 1e-9);
      /* fast inertia agrees with a direct computation */
      double direct = 0.0;
      for (size_t i = 0; i < n; i++) {
        double e = x[i] - c1[mopt_km_assign1(c1, m, x[i])];
        direct += e * e;
      }
      assert_true(fabs(direct - fast) <= 1e-6 * direct + 1e-9);
    }
  mopt_km_data_free(&d);
  free(x);
}

static void deterministic_per_seed(void **st) {
  (void)st;
  const size_t n = 3000;
  float x[3000], t1[16], t2[16], t3[16];
  uint8_t i1[3000], i2[3000];
  kt_gauss(x, n, 99, 1.0);
  for (int init = 0; init < 4; init++) {
    assert_int_equal(mopt_cluster_values(x, n, 1, 16, (mopt_km_init)init, 7, 0, t1, i1), 0);
    assert_int_equal(mopt_cluster_values(x, n, 1, 16, (mopt_km_init)init, 7, 0, t2, i2), 0);
    assert_memory_equal(t1, t2, sizeof t1);
    assert_memory_equal(i1, i2, sizeof i1);
  }
  assert_int_equal(mopt_cluster_values(x, n, 1, 16, MOPT_KM_RANDOM, 8, 0, t3, i2), 0);
  assert_int_equal(mopt_cluster_values(x, n, 1, 16, MOPT_KM_RANDOM, 7, 0, t1, i1), 0);
  assert_memory_not_equal(t1, t3, sizeof t1);  /* the seed matters for random init */
}

static void zeros_keep_their_own_centroid(void **st) {
  (void)st;
  const size_t n = 8192;
  float *x = malloc(n * sizeof *x);
  uint8_t *idx = malloc(n);
  float table[16];
  kt_gauss(x, n, 5, 1.0);
  size_t zp = mopt_prune_unstructured(x, n, 0.5, NULL);
  assert_int_equal(zp, n / 2);
  assert_int_equal(mopt_cluster_values(x, n, 1, 16, MOPT_KM_KMEANSPP, 0, 1, table, idx), 0);
  int zero_entries = 0;
  for (int j = 0; j < 16; j++) zero_entries += table[j] == 0.0f;
  assert_int_equal(zero_entries, 1);
  size_t zeros_after = 0;
  float *y = malloc(n * sizeof *y);
  for (size_t i = 0; i < n; i++) {
    y[i] = table[idx[i]];
    zeros_after += y[i] == 0.0f;
    if (x[i] == 0.0f) assert_true(y[i] == 0.0f);
    else assert_true(y[i] != 0.0f);            /* non-zeros never collapse into the zero */
  }
  assert_int_equal(zeros_after, zp);
  assert_true(mopt_count_distinct(y, n) <= 16);
  double mx;
  assert_true(mopt_snr_db(x, y, n, &mx) > 15.0);
  free(x); free(y); free(idx);
}

static void few_distinct_values_are_exact(void **st) {
  (void)st;
  float x[1000], table[8];
  uint8_t idx[1000];
  const float vals[5] = {-1.5f, -0.25f, 0.0f, 0.125f, 3.0f};
  for (int i = 0; i < 1000; i++) x[i] = vals[(i * 7) % 5];
  assert_int_equal(mopt_cluster_values(x, 1000, 1, 8, MOPT_KM_LINEAR, 0, 0, table, idx), 0);
  for (int i = 0; i < 1000; i++) assert_true(table[idx[i]] == x[i]);
  for (int j = 5; j < 8; j++) assert_true(table[j] == table[4]);   /* padding */
  /* strided input: every other element */
  float y[2000];
  uint8_t yi[2000];
  for (int i = 0; i < 2000; i++) y[i] = (i & 1) ? 99.0f : vals[(i / 2) % 5];
  assert_int_equal(mopt_cluster_values(y, 1000, 2, 8, MOPT_KM_DENSITY, 0, 0, table, yi), 0);
  for (int i = 0; i < 2000; i += 2) assert_true(table[yi[i]] == y[i]);
}

static void fast_on_a_million_values(void **st) {
  (void)st;
  const size_t n = 1u << 20;
  float *x = malloc(n * sizeof *x);
  uint8_t *idx = malloc(n);
  float table[256];
  kt_gauss(x, n, 123, 0.05);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(mopt_cluster_values(x, n, 1, 256, MOPT_KM_KMEANSPP, 0, 0, table, idx), 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  print_message("# 1M values, 256 clusters: %.3f s\n", s);
  assert_true(s < 5.0);                        /* the n*k loop would take minutes at -O0 */
  float *y = malloc(n * sizeof *y);
  for (size_t i = 0; i < n; i++) y[i] = table[idx[i]];
  double mx;
  assert_true(mopt_snr_db(x, y, n, &mx) > 40.0);  /* 256 levels ≈ 8-bit non-uniform */
  free(x); free(y); free(idx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(assign_matches_reference),
    cmocka_unit_test(lloyd_no_worse_than_reference),
    cmocka_unit_test(deterministic_per_seed),
    cmocka_unit_test(zeros_keep_their_own_centroid),
    cmocka_unit_test(few_distinct_values_are_exact),
    cmocka_unit_test(fast_on_a_million_values),
  };
  return cmocka_run_group_tests_name("core/cluster", tests, NULL, NULL);
}
