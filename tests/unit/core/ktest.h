/* ktest.h — helpers shared by the core kernel tests: seeded Gaussian/uniform data, SNR. */
#ifndef MOPT_KTEST_H
#define MOPT_KTEST_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

static inline void kt_gauss(float *x, size_t n, uint64_t seed, double sigma) {
  uint64_t s = seed;
  for (size_t i = 0; i < n; i += 2) {
    double u1 = mopt_rng_unit(&s), u2 = mopt_rng_unit(&s);
    if (u1 < 1e-300) u1 = 1e-300;
    double r = sqrt(-2.0 * log(u1)) * sigma;
    x[i] = (float)(r * cos(2.0 * M_PI * u2));
    if (i + 1 < n) x[i + 1] = (float)(r * sin(2.0 * M_PI * u2));
  }
}

static inline void kt_uniform(float *x, size_t n, uint64_t seed, double lo, double hi) {
  uint64_t s = seed;
  for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * mopt_rng_unit(&s));
}

#endif
