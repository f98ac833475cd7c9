/* kmeans_bench — times libmopt's 1-D k-means on N float32 values (the clustering pass's kernel)
 * and writes the data and the initial centroids so tests/bench/bench_core.py can run
 * scikit-learn's KMeans from the same start on the same data in the same run.
 *   kmeans_bench N K SEED OUTDIR   → OUTDIR/data.f32, init.f32, final.f32; JSON on stdout */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels.h"
#include "mopt.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int write_f32(const char *dir, const char *name, const float *x, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(x, sizeof *x, n, f) != n) { perror(path); return -1; }
  return fclose(f);
}

int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: kmeans_bench N K SEED OUTDIR\n"); return 2; }
  size_t n = strtoull(argv[1], NULL, 10), k = strtoull(argv[2], NULL, 10);
  uint64_t seed = strtoull(argv[3], NULL, 10);
  float *x = malloc(n * sizeof *x), *init = malloc(k * sizeof *init), *cent = malloc(k * sizeof *cent);
  if (!x || !init || !cent) return 1;
  /* Weight-like data: a mix of two Gaussians (Box-Muller), deterministic. */
  uint64_t st = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; i += 2) {
    double u1 = mopt_rng_unit(&st), u2 = mopt_rng_unit(&st);
    if (u1 < 1e-300) u1 = 1e-300;
    double r = sqrt(-2 * log(u1)), th = 6.283185307179586 * u2;
    double sd = (i % 10 == 0) ? 0.2 : 0.03;
    x[i] = (float)(r * cos(th) * sd);
    if (i + 1 < n) x[i + 1] = (float)(r * sin(th) * sd);
  }
  double t0 = now_ms();
  mopt_km_data d;
  if (mopt_km_data_init(&d, x, n, 1, 0)) return 1;
  double t1 = now_ms();
  size_t got = mopt_km_init_centroids(&d, k, MOPT_KM_KMEANSPP, seed, init);
  double t2 = now_ms();
  for (size_t i = 0; i < got; i++) cent[i] = init[i];
  double inertia = mopt_kmeans_fit(&d, cent, got, 300);
  double t3 = now_ms();
  mopt_km_data_free(&d);
  if (write_f32(argv[4], "data.f32", x, n) || write_f32(argv[4], "init.f32", init, got) ||
      write_f32(argv[4], "final.f32", cent, got))
    return 1;
  printf("{\"n\":%zu,\"k\":%zu,\"sort_ms\":%.3f,\"init_ms\":%.3f,\"fit_ms\":%.3f,"
         "\"total_ms\":%.3f,\"inertia\":%.9g}\n", n, got, t1 - t0, t2 - t1, t3 - t2, t3 - t0, inertia);
  free(x); free(init); free(cent);
  return 0;
}
