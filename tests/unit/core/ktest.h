/* ktest.h — helpers shared by the core tests: seeded Gaussian/uniform data, reading a file. */
#ifndef MOPT_KTEST_H
#define MOPT_KTEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
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

/* A whole file in a malloc'd buffer (one spare byte), or NULL when it cannot be read. */
static inline uint8_t *kt_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  uint8_t *b = NULL;
  long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
  if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)n + 1)) &&
      fread(b, 1, (size_t)n, f) != (size_t)n) {
    free(b);
    b = NULL;
  }
  fclose(f);
  if (b) *len = (size_t)n;
  return b;
}

#endif
