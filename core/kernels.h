/* kernels.h — internal numeric kernels of libmopt on plain float arrays (not public API).
 *
 * Every fast kernel has a plain scalar reference twin (suffix _ref) that states its semantics
 * in the most obvious code; unit tests compare fast against reference on random data, and the
 * reference against float32 with named error bounds. Kernels know nothing about ONNX: a tensor
 * is a flat row-major float array plus a view of it around one axis:
 *
 *     [outer][dim][inner]   with   outer = prod(dims[0..axis)), dim = dims[axis],
 *                                  inner = prod(dims(axis..ndim))
 *
 * Trade-off: the kernels favour simple, exactly specified, deterministic arithmetic (ties broken
 * by index, seeded PRNG) over the last few percent of speed, and keep memory at O(n) extra.
 * Thread-safety: all kernels are reentrant; they touch only their arguments.
 */
#ifndef MOPT_KERNELS_H
#define MOPT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- views ---- */
typedef struct mopt_axis_view {
  int64_t outer, dim, inner;   /* outer * dim * inner == nelem */
} mopt_axis_view;

/* View of a tensor with ndim dims around axis (axis -1 → outer = 1, dim = nelem, inner = 1). */
mopt_axis_view mopt_view_make(const int64_t *dims, int32_t ndim, int32_t axis);

/* ---------------------------------------------------------------- PRNG ---- */
/* splitmix64: tiny, seedable, identical on every platform. */
uint64_t mopt_rng_next(uint64_t *state);
/* Uniform double in [0, 1) with 53 random bits. */
double mopt_rng_unit(uint64_t *state);

/* ---------------------------------------------------------------- quantize ---- */
/* Integer range of a quantized type (MOPT_DT_INT8/UINT8/INT4/UINT4). Returns 0 or MOPT_EINVAL. */
int mopt_qrange(int32_t qtype, int32_t *qmin, int32_t *qmax);

/* How the scales are laid out over the tensor (matches mopt_qtensor in mopt.h):
 *   gran 0 per tensor: 1 group.
 *   gran 1 per channel along the view's dim: dim groups, group = d.
 *   gran 2 block: blocks of block_size along the view's dim; groups laid out as the tensor's shape
 *          with dim replaced by nb = ceil(dim / block_size): group = (o * nb + d / bs) * inner + i.
 */
typedef struct mopt_qlayout {
  int32_t gran;                /* 0 per tensor, 1 per channel, 2 block */
  mopt_axis_view v;
  int64_t block_size;          /* gran 2 only */
} mopt_qlayout;

/* Number of scale groups of a layout. */
size_t mopt_qlayout_groups(const mopt_qlayout *l);

typedef struct mopt_qconfig {
  int32_t qtype;               /* MOPT_DT_INT8 / UINT8 / INT4 / UINT4 */
  int32_t symmetric;           /* 1: zero point fixed at 0 (signed) or mid-range (unsigned) */
  int32_t mse_search;          /* 1: per group, pick the clip ratio of mopt_clip_grid with least MSE */
} mopt_qconfig;

/* Clip ratios tried by the MSE search, 1.0 first, descending. */
#define MOPT_CLIP_GRID_N 20
extern const float mopt_clip_grid[MOPT_CLIP_GRID_N];

/* Quantization parameters of one group of values (n values at stride 1 in vals):
 *   symmetric: amax = max|x| * clip; signed: zp = 0, scale = amax / qmax;
 *              unsigned: zp = (qmax + 1) / 2, scale = amax / (qmax - zp).
 *   affine:    lo = min(0, min x) * clip, hi = max(0, max x) * clip (the range always holds 0),
 *              scale = (hi - lo) / (qmax - qmin), zp = clamp(round(qmin - lo / scale)), so 0.0
 *              quantizes to zp and dequantizes to exactly 0.0.
 *   An all-zero group gets scale 1, zp as above. Scale is never 0, never subnormal.
 * With mse_search, each ratio of mopt_clip_grid is tried and the first with the least squared
 * error wins (ties keep the larger range). */
void mopt_qparams_ref(const float *vals, size_t n, const mopt_qconfig *c, float *scale, int32_t *zp);

/* Quantize one value: clamp(round_half_even(x / scale) + zp, qmin, qmax). */
int32_t mopt_quant1(float x, float scale, int32_t zp, int32_t qmin, int32_t qmax);
/* Dequantize one value: (q - zp) * scale. */
float mopt_dequant1(int32_t q, float scale, int32_t zp);

/* float32 values at any address (tensor payloads inside a mapped model file need not be 4-byte
 * aligned); a float * converts to it implicitly. */
typedef float mopt_f32u __attribute__((aligned(1)));

/* The parameters alone (scales/zps, mopt_qlayout_groups entries each), in one read of x; with
 * nonfinite != NULL, *nonfinite says whether x holds a NaN or an infinity. */
int mopt_quantize_params(const mopt_f32u *x, const mopt_qlayout *l, const mopt_qconfig *c,
                         float *scales, int32_t *zps, int *nonfinite);

/* Whole tensor: computes scales/zps (mopt_qlayout_groups entries each) and q (nelem) and, when
 * deq != NULL, the dequantized values. The _ref twin gathers each group by the index formula
 * above and calls mopt_qparams_ref; the fast kernel walks the layout in memory order.
 * Returns 0, MOPT_ENOMEM or MOPT_EINVAL. */
int mopt_quantize_tensor(const float *x, const mopt_qlayout *l, const mopt_qconfig *c,
                         float *scales, int32_t *zps, int32_t *q, float *deq);
int mopt_quantize_tensor_ref(const float *x, const mopt_qlayout *l, const mopt_qconfig *c,
                             float *scales, int32_t *zps, int32_t *q, float *deq);

/* Re-quantize x with given scales/zps (same layout): q and optionally deq. Idempotent on values
 * that were produced by dequantizing with the same parameters. */
void mopt_quantize_apply(const float *x, const mopt_qlayout *l, int32_t qtype, const float *scales,
                         const int32_t *zps, int32_t *q, float *deq);

/* Elements [e0, e1) of x (x is the whole tensor) into q[0 .. e1 - e0): the values
 * mopt_quantize_apply gives them, computed a slice at a time for encoders that stream. */
void mopt_quantize_apply_range(const mopt_f32u *x, const mopt_qlayout *l, int32_t qtype,
                               const float *scales, const int32_t *zps, uint64_t e0, uint64_t e1,
                               int32_t *q);
/* The same stored as bytes (each value's low byte, as 8-bit raw_data holds it). */
void mopt_quantize_apply_range_u8(const mopt_f32u *x, const mopt_qlayout *l, int32_t qtype,
                                  const float *scales, const int32_t *zps, uint64_t e0,
                                  uint64_t e1, uint8_t *out);

/* ---------------------------------------------------------------- prune ---- */
/* Order-preserving key of |x| (larger |x| → larger key; NaN sorts last). */
uint32_t mopt_abs_key(float x);

/* Keys of a set of arrays, for selecting a global threshold. */
typedef struct mopt_farray { const float *x; size_t n; } mopt_farray;

/* The k-th smallest (0-based) abs key over all arrays, by two 16-bit radix histogram passes
 * (no copy of the data). k must be < total count. The _ref twin sorts a copy. */
uint32_t mopt_kth_abs_key(const mopt_farray *arrs, size_t n_arrs, uint64_t k);
uint32_t mopt_kth_abs_key_ref(const mopt_farray *arrs, size_t n_arrs, uint64_t k);

/* Incremental two-phase radix selection (for one threshold over tensors seen one at a time):
 * phase 1 adds the top 16 bits of every abs key to hist[65536]; mopt_kth_pick then finds the
 * bucket holding the k-th key and the rank left inside it; phase 2 adds the low 16 bits of the
 * keys whose top bits equal that bucket; mopt_kth_pick on that histogram finishes the key.
 * *below receives how many keys of the histogram lie in buckets before the chosen one. */
void mopt_abs_hist_hi(const float *x, size_t n, uint64_t *hist);
void mopt_abs_hist_lo(const float *x, size_t n, uint32_t top, uint64_t *hist);
uint32_t mopt_kth_pick(const uint64_t *hist, uint64_t k, uint64_t *below);

/* Unstructured magnitude pruning of one tensor: zeroes exactly round(sparsity * n) elements,
 * the smallest |x| first, ties broken by lower index first. keep (may be NULL) receives 1/0.
 * Returns the number of zeroed elements. */
size_t mopt_prune_unstructured(float *x, size_t n, double sparsity, uint8_t *keep);
size_t mopt_prune_unstructured_ref(float *x, size_t n, double sparsity, uint8_t *keep);

/* Zero every element whose abs key is < thr, plus, in index order, elements whose key == thr
 * while *ties_left > 0 (decremented). Used with one global threshold over many tensors.
 * Returns the number of zeroed elements. */
size_t mopt_prune_threshold(float *x, size_t n, uint32_t thr, uint64_t *ties_left);

/* N:M along the view's dim: in every group of m consecutive elements along dim (for each
 * outer, inner), keep the n largest |x| (ties → lower index); a partial tail group of length
 * L < m keeps min(n, L). Returns the number of zeroed elements. */
size_t mopt_prune_nm(float *x, mopt_axis_view v, int32_t n, int32_t m);
size_t mopt_prune_nm_ref(float *x, mopt_axis_view v, int32_t n, int32_t m);
/* 1 when every group (as above) holds at most n non-zeros, else 0. */
int mopt_nm_check(const float *x, mopt_axis_view v, int32_t n, int32_t m);

/* Block pruning on the 2-D view rows x cols (row-major): blocks of br x bc (edge blocks
 * smaller), scored by the L1 norm; the round(sparsity * nblocks) lowest-scored blocks (ties →
 * lower block index) are zeroed. Returns the number of zeroed blocks. */
size_t mopt_prune_blocks(float *x, int64_t rows, int64_t cols, int32_t br, int32_t bc,
                         double sparsity);

/* Channel pruning: channels are the view's dim; score = L1 (norm 1) or L2 (norm 2) over all
 * outer x inner elements of the channel; the round(sparsity * dim) lowest (ties → lower index)
 * are zeroed. Returns the number of zeroed channels. */
size_t mopt_prune_channels(float *x, mopt_axis_view v, int32_t norm, double sparsity);

/* ---------------------------------------------------------------- cluster ---- */
typedef enum { MOPT_KM_KMEANSPP = 0, MOPT_KM_LINEAR = 1, MOPT_KM_DENSITY = 2,
               MOPT_KM_RANDOM = 3 } mopt_km_init;

/* The 1-D k-means working set: the values sorted ascending (duplicates kept) with prefix sums of
 * v and v*v stored only at every MOPT_KM_BLOCK-th index (a prefix at any index is a stored one
 * plus fewer than MOPT_KM_BLOCK additions), so the extra memory is the sorted copy alone. */
#define MOPT_KM_BLOCK 32
typedef struct mopt_km_data {
  size_t n;            /* values */
  size_t distinct;     /* distinct values among them */
  float *v;            /* n values, ascending */
  double *b1, *b2;     /* n / MOPT_KM_BLOCK + 1 block prefix sums of v and v*v */
} mopt_km_data;

/* Builds the working set from n values at stride `stride` (radix sort of a copy).
 * skip_zeros: 1 ignores values equal to 0.0 (pruned zeros keep their own centroid); NaN is
 * ignored. Returns 0 or MOPT_ENOMEM. */
int mopt_km_data_init(mopt_km_data *d, const float *x, size_t n, size_t stride, int skip_zeros);
void mopt_km_data_free(mopt_km_data *d);

/* Initial centroids (ascending, k of them; fewer only when the data has fewer distinct values:
 * returns the count actually produced). kmeans++ samples with D^2 weights using segment sums
 * (O(k^2 + k log n)); linear spaces k points over [min, max]; density takes the quantiles
 * (j + 0.5) / k; random samples k values without replacement. Deterministic for a seed. */
size_t mopt_km_init_centroids(const mopt_km_data *d, size_t k, mopt_km_init init, uint64_t seed,
                              float *cent);

/* Lloyd iterations on sorted data: boundaries between sorted centroids are found by binary
 * search and means come from prefix sums, so one iteration costs O(k log n). Stops when no
 * boundary moves or after max_iter. An empty cluster keeps its centroid. cent (k, ascending) is
 * updated in place and stays ascending. Returns the final inertia (sum of squared distances). */
double mopt_kmeans_fit(const mopt_km_data *d, float *cent, size_t k, int max_iter);

/* Reference Lloyd on raw values (n x k loop): assign each value to the nearest centroid (tie →
 * lower index), recompute means (empty keeps old), until no assignment changes or max_iter.
 * Returns the inertia. */
double mopt_kmeans_fit_ref(const float *x, size_t n, float *cent, size_t k, int max_iter);

/* Index of the nearest centroid (tie → lower index) among k ascending centroids, O(log k). */
uint8_t mopt_km_assign1(const float *cent, size_t k, float x);
/* The same for n values at stride (idx at the same stride), by a branch-free search over the
 * midpoints between centroids (computed once). */
void mopt_km_assign_many(const float *cent, size_t k, const float *x, size_t n, size_t stride,
                         uint8_t *idx);
/* Same by a linear scan (reference). */
uint8_t mopt_km_assign1_ref(const float *cent, size_t k, float x);

/* Clusters n values at stride `stride` into at most k (2..256) centroids written to table[k]
 * (ascending; padded with the last centroid when there are fewer distinct values) and idx
 * (at the same stride). keep_zero: zeros form their own exact centroid 0.0 and the rest use
 * k - 1 clusters. Returns 0 or MOPT_ENOMEM. */
int mopt_cluster_values(const float *x, size_t n, size_t stride, int32_t k, mopt_km_init init,
                        uint64_t seed, int keep_zero, float *table, uint8_t *idx);

/* ---------------------------------------------------------------- fp16 ---- */
/* Converts n floats to IEEE half (round to nearest even) after clamping values beyond ±65504
 * (infinities included) to ±65504; NaN stays NaN. Returns how many values were clamped. The _ref twin clamps and
 * calls mopt_f32_to_f16. */
uint64_t mopt_fp16_convert(const float *x, size_t n, uint16_t *out);
uint64_t mopt_fp16_convert_ref(const float *x, size_t n, uint16_t *out);

/* ---------------------------------------------------------------- decompose ---- */
/* Rank choice from singular values s (descending, n of them): fixed_rank > 0 → min(fixed, n);
 * otherwise the smallest r with sum(s[0..r)^2) >= energy * sum(s^2) (at least 1). */
int64_t mopt_svd_rank(const float *s, size_t n, double energy, int32_t fixed_rank);

/* Truncated SVD of the row-major r x c matrix w (LAPACKE_sgesdd): on success *rank_out is the
 * chosen rank and *a (r x rank, U * S) and *b (rank x c, Vt) are malloc'd (caller frees).
 * Returns 0; 1 when the rank would not reduce parameters (rank*(r+c) >= r*c; nothing
 * allocated); MOPT_ENOMEM; MOPT_EINTERNAL when LAPACK fails to converge. */
int mopt_svd_lowrank(const float *w, int64_t r, int64_t c, double energy, int32_t fixed_rank,
                     int64_t *rank_out, float **a, float **b);

/* ---------------------------------------------------------------- stats ---- */
/* Distinct float values (bitwise, with -0 == +0) in n values. Returns 0 on allocation
 * failure. */
uint64_t mopt_count_distinct(const mopt_f32u *x, size_t n);
/* The same with a counter kept across calls: its scratch (n keys for the largest n seen, and a
 * 256 KiB bitmap) is allocated and first touched once per run instead of once per tensor. */
typedef struct mopt_distinct mopt_distinct;
mopt_distinct *mopt_distinct_new(void);
void mopt_distinct_free(mopt_distinct *dc);
/* *out = distinct values in x[0..n) (x may be unaligned: a payload in the mapped input);
 * MOPT_ENOMEM when the scratch cannot grow. */
int mopt_distinct_count(mopt_distinct *dc, const mopt_f32u *x, size_t n, uint64_t *out);
/* Fraction of exact zeros. */
double mopt_sparsity(const float *x, size_t n);
/* Signal-to-noise ratio of approximation y of x in dB: 10 log10(sum x^2 / sum (x-y)^2)
 * (+inf reported as 999 when exact, -999 when x is all zero and y is not). Also max |x - y|.
 * x may be unaligned (a float32 payload in the mapped input). */
double mopt_snr_db(const mopt_f32u *x, const float *y, size_t n, double *max_abs_err);

/* LSD radix sort of float keys in ascending numeric order (tmp: n floats of scratch). */
void mopt_sort_floats(float *x, size_t n, float *tmp);

#endif
