/* tests/unit/core/decompose.c — truncated SVD: rank choice from energy / fixed rank, exact
 * recovery of a low-rank matrix, refusal when the factors would not be smaller. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "ktest.h"
#include "mopt.h"

static void rank_from_energy(void **st) {
  (void)st;
  const float s[5] = {3.0f, 2.0f, 1.0f, 0.5f, 0.0f};   /* energies 9 4 1 .25: total 14.25 */
  assert_int_equal(mopt_svd_rank(s, 5, 0.5, 0), 1);    /* 9/14.25 = .63 */
  assert_int_equal(mopt_svd_rank(s, 5, 0.9, 0), 2);    /* 13/14.25 = .912 */
  assert_int_equal(mopt_svd_rank(s, 5, 0.95, 0), 3);   /* 14/14.25 = .982 */
  assert_int_equal(mopt_svd_rank(s, 5, 1.0, 0), 4);
  assert_int_equal(mopt_svd_rank(s, 5, 0.5, 3), 3);
  assert_int_equal(mopt_svd_rank(s, 5, 0.5, 9), 5);
}

static void recovers_low_rank(void **st) {
  (void)st;
  enum { R = 96, C = 64, K = 6 };
  float u[R * K], v[K * C], *w = malloc(R * C * sizeof *w), *y = malloc(R * C * sizeof *y);
  kt_gauss(u, R * K, 1, 1.0);
  kt_gauss(v, K * C, 2, 1.0);
  float noise[R * C];
  kt_gauss(noise, R * C, 3, 1e-3);
  for (int i = 0; i < R; i++)
    for (int j = 0; j < C; j++) {
      double acc = 0;
      for (int t = 0; t < K; t++) acc += (double)u[i * K + t] * v[t * C + j];
      w[i * C + j] = (float)acc + noise[i * C + j];
    }
  int64_t rank;
  float *a, *b;
  assert_int_equal(mopt_svd_lowrank(w, R, C, 0.999, 0, &rank, &a, &b), 0);
  assert_int_equal(rank, K);
  for (int i = 0; i < R; i++)
    for (int j = 0; j < C; j++) {
      double acc = 0;
      for (int t = 0; t < rank; t++) acc += (double)a[i * rank + t] * b[t * C + j];
      y[i * C + j] = (float)acc;
    }
  double mx;
  double snr = mopt_snr_db(w, y, R * C, &mx);
  print_message("# rank %d SNR %.1f dB max err %.2e\n", (int)rank, snr, mx);
  assert_true(snr > 50.0);
  free(a); free(b);
  /* a fixed rank is honoured */
  assert_int_equal(mopt_svd_lowrank(w, R, C, 0, 3, &rank, &a, &b), 0);
  assert_int_equal(rank, 3);
  free(a); free(b);
  /* full energy of a full-rank matrix: factors would be larger → refused, nothing allocated */
  kt_gauss(w, R * C, 9, 1.0);
  assert_int_equal(mopt_svd_lowrank(w, R, C, 1.0, 0, &rank, &a, &b), 1);
  assert_null(a);
  assert_null(b);
  assert_int_equal(mopt_svd_lowrank(w, R, C, 0, 40, &rank, &a, &b), 1);  /* 40*160 > 96*64 */
  free(w); free(y);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(rank_from_energy),
    cmocka_unit_test(recovers_low_rank),
  };
  return cmocka_run_group_tests_name("core/decompose", tests, NULL, NULL);
}
