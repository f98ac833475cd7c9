/* mopt.h — public API of libmopt, the moptd compression core (pure C11).
 *
 * Three layers, each usable alone:
 *   1. Model I/O (onnx.c, model.c): load a serialized ONNX model with limits and validation,
 *      inspect it, save it back byte-stable. Unknown protobuf fields survive a round trip.
 *   2. Weights (weights.c, encode.c): every weight tensor wherever it lives (graph.initializer,
 *      Constant nodes, If/Loop/Scan subgraphs, recursively), its consumer and axes, decode to
 *      float32, and the encoders that write a compressed form back into the graph in a form the
 *      model's opset can run (DequantizeLinear, Cast+Mul, Cast+Gather LUT, fp16+Cast, two MatMuls).
 *   3. Passes and pipeline (quantize.c, prune.c, cluster.c, fp16.c, decompose.c, pipeline.c,
 *      report.c): the job spec as a C struct, run in order on float working copies, then encoded.
 *
 * Thread-safety: a mopt_model is owned by one thread at a time; distinct models are independent.
 * Errors: 0 or a negative MOPT_E* (mopt_error.h); details in a mopt_diag.
 */
#ifndef MOPT_H
#define MOPT_H

#include <stddef.h>
#include <stdint.h>

#include "mopt_error.h"

#define MOPT_VERSION "0.1.0"

/* ---------------------------------------------------------------- data types ---- */
/* ONNX TensorProto.DataType values; they reach the wire, never renumber. */
typedef enum {
  MOPT_DT_UNDEFINED = 0,
  MOPT_DT_FLOAT = 1, MOPT_DT_UINT8 = 2, MOPT_DT_INT8 = 3, MOPT_DT_UINT16 = 4,
  MOPT_DT_INT16 = 5, MOPT_DT_INT32 = 6, MOPT_DT_INT64 = 7, MOPT_DT_STRING = 8,
  MOPT_DT_BOOL = 9, MOPT_DT_FLOAT16 = 10, MOPT_DT_DOUBLE = 11, MOPT_DT_UINT32 = 12,
  MOPT_DT_UINT64 = 13, MOPT_DT_COMPLEX64 = 14, MOPT_DT_COMPLEX128 = 15,
  MOPT_DT_BFLOAT16 = 16, MOPT_DT_FLOAT8E4M3FN = 17, MOPT_DT_FLOAT8E4M3FNUZ = 18,
  MOPT_DT_FLOAT8E5M2 = 19, MOPT_DT_FLOAT8E5M2FNUZ = 20, MOPT_DT_UINT4 = 21, MOPT_DT_INT4 = 22,
  MOPT_DT_COUNT_ = 23
} mopt_dtype;

/* Name ("float32", "int8", …) of a dtype, "unknown" when out of range. */
const char *mopt_dtype_name(int32_t dt);
/* Bits per element (4 for int4/uint4, 0 for string/undefined). */
int mopt_dtype_bits(int32_t dt);

/* IEEE half <-> float, round to nearest even; values beyond fp16 range become ±inf. */
uint16_t mopt_f32_to_f16(float f);
float mopt_f16_to_f32(uint16_t h);
uint16_t mopt_f32_to_bf16(float f);
float mopt_bf16_to_f32(uint16_t h);

/* ---------------------------------------------------------------- model I/O ---- */
typedef struct mopt_model mopt_model;

/* Limits applied while loading untrusted bytes. Zero fields take the defaults shown. */
typedef struct mopt_load_limits {
  uint64_t max_tensor_elems;   /* per tensor; default 1 << 34 */
  uint64_t max_total_bytes;    /* decoded tensor bytes in all; default 64 GiB */
  uint32_t max_graph_depth;    /* subgraph nesting; default 32 */
  const char *bundle_dir;      /* external data resolved only under this directory; NULL = refuse
                                  every external tensor with MOPT_EUNSUPPORTED */
} mopt_load_limits;

/* Parses and validates an ONNX ModelProto. Validation covers: protobuf well-formedness and
 * nesting depth, dims (negative, product overflow, over limits), data length vs shape and dtype
 * (raw_data and typed fields), node inputs that name no value (missing inputs), cycles, unknown
 * dtypes on weights, external-data paths (absolute, "..", symlinks refused).
 * On success *out owns a copy of everything it needs (buf may be freed).
 * Returns 0, MOPT_EPARSE, MOPT_EMODEL, MOPT_ELIMIT, MOPT_EUNSUPPORTED, MOPT_ENOMEM. */
int mopt_model_load(const uint8_t *buf, size_t len, const mopt_load_limits *lim,
                    mopt_model **out, mopt_diag *diag);
/* Same, reading a file (mmap). bundle_dir defaults to the file's directory when lim->bundle_dir
 * is NULL and lim is NULL or its bundle_dir field is NULL. */
int mopt_model_load_file(const char *path, const mopt_load_limits *lim, mopt_model **out,
                         mopt_diag *diag);
/* Serializes the model. *out is malloc'd, caller frees. Byte-stable: save(load(save(x))) == save(x). */
int mopt_model_save(const mopt_model *m, uint8_t **out, size_t *out_len);
/* Writes to path atomically (temp file in the same dir, fsync, rename, fsync dir). */
int mopt_model_save_file(const mopt_model *m, const char *path, mopt_diag *diag);
/* Frees the model. NULL is a no-op. */
void mopt_model_destroy(mopt_model *m);
/* Lets later encoders stream their outputs of at least min_bytes: instead of building a
 * quantized tensor in memory they leave a producer that mopt_model_save_file runs while it
 * writes, reading the values from the model's mapped input (models from mopt_model_load_file;
 * a no-op otherwise).
 * The output bytes are the same either way. Once a tensor is streamed the model can only be
 * saved with mopt_model_save_file (any number of times) and destroyed: mopt_model_save,
 * the report's size measurement and reading encoded weights return MOPT_EINVAL. */
void mopt_model_allow_streaming(mopt_model *m, size_t min_bytes);
/* A good min_bytes: each streamed payload costs an address-space reservation and a lookup. */
#define MOPT_STREAM_MIN_BYTES ((size_t)64 << 10)

/* Summary used for upload metadata and `mopt inspect`. */
typedef struct mopt_opset { char domain[64]; int64_t version; } mopt_opset;
typedef struct mopt_model_info {
  int64_t ir_version;
  size_t n_opsets;
  mopt_opset opsets[16];      /* first 16 opset imports */
  uint64_t node_count;        /* all nodes, subgraphs included */
  uint64_t weight_count;      /* weight tensors: initializers + Constant values, subgraphs incl. */
  uint64_t param_count;       /* elements of those tensors */
  uint64_t weight_bytes;      /* their decoded bytes */
  char producer_name[64];
  char producer_version[32];
  int64_t default_opset;      /* version of the "" / "ai.onnx" domain, 0 if absent */
} mopt_model_info;
int mopt_model_info_get(const mopt_model *m, mopt_model_info *info);

/* Validates serialized model bytes WITHOUT loading them: a streaming walk of the protobuf wire
 * format with bounded memory (names only; tensor payloads are skipped), explicit nesting
 * limits, dims/data-size/dtype/external-data checks, and graph checks (every input defined,
 * each value produced once, no cycles). Fills info (may be NULL). The daemon uses the _file form
 * for uploads so memory does not grow with model size. Same return codes as mopt_model_load. */
int mopt_model_scan(const uint8_t *buf, size_t len, const mopt_load_limits *lim,
                    mopt_model_info *info, mopt_diag *diag);
int mopt_model_scan_file(const char *path, const mopt_load_limits *lim, mopt_model_info *info,
                         mopt_diag *diag);

/* The same scan, also reporting every TensorProto (initializers, Constant values, and any other
 * tensor attribute), in file order, with the byte ranges a payload codec needs. fn may return a
 * negative error to stop the scan. Pointers in *t are valid during the call only. */
typedef struct mopt_scan_tensor {
  const char *name;
  int32_t dtype;
  int32_t ndim;
  const int64_t *dims;
  uint64_t nelem;
  int32_t location;            /* MOPT_LOC_INITIALIZER, MOPT_LOC_CONSTANT, or -1 (other) */
  uint64_t ordinal;            /* 0, 1, … in file order */
  uint64_t msg_offset, msg_length;   /* the TensorProto message body within the file */
  uint64_t raw_offset, raw_length;   /* raw_data payload within the file; 0/0 when typed fields */
} mopt_scan_tensor;
typedef int (*mopt_scan_tensor_fn)(const mopt_scan_tensor *t, void *ctx);
int mopt_model_scan_tensors(const uint8_t *buf, size_t len, const mopt_load_limits *lim,
                            mopt_scan_tensor_fn fn, void *ctx, mopt_model_info *info,
                            mopt_diag *diag);
int mopt_model_scan_file_tensors(const char *path, const mopt_load_limits *lim,
                                 mopt_scan_tensor_fn fn, void *ctx, mopt_model_info *info,
                                 mopt_diag *diag);

/* Op type histogram for inspect: calls fn(op_type, count, ctx) once per distinct op type. */
void mopt_model_op_counts(const mopt_model *m,
                          void (*fn)(const char *op_type, uint64_t count, void *ctx), void *ctx);

/* ---------------------------------------------------------------- weights ---- */
typedef enum {
  MOPT_LOC_INITIALIZER = 0,   /* graph.initializer (of the main graph or a subgraph) */
  MOPT_LOC_CONSTANT = 1,      /* value attribute of a Constant node */
} mopt_weight_loc;

/* One weight tensor. Owned by the model; valid until the model is destroyed. The encoders
 * below may rewrite the graph but never invalidate mopt_weight pointers of other weights. */
typedef struct mopt_weight {
  const char *name;          /* tensor (value) name */
  const char *graph_path;    /* "main", or "main/If_0.then_branch", … */
  mopt_weight_loc loc;
  int32_t dtype;             /* mopt_dtype */
  int32_t ndim;
  int64_t dims[8];
  uint64_t nelem;
  /* The op that consumes it as a weight, found by following the graph through
   * Transpose/Reshape/Identity/Cast; NULL if it has no weight-like consumer. */
  const char *consumer_op;   /* "MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "RNN",
                                "Gather", … */
  int32_t consumer_input;    /* which input of consumer_op */
  /* Axis (in this tensor's own layout) along output channels: Conv/ConvTranspose dim 0 / 1,
   * Gemm 0 if transB else 1, MatMul last dim, Gather 0 (rows). -1 when none. */
  int32_t channel_axis;
  /* Axis summed over by the consumer (MatMul K = dim 0 of a 2-D B, Conv: 1, …); -1 when none. */
  int32_t reduction_axis;
  int32_t is_weight;         /* 1 if consumed as a weight by a supported op (what passes touch) */
  uint32_t index;            /* position in mopt_model_weights() order, stable for a model */
} mopt_weight;

/* All tensors found in initializers and Constant nodes (subgraphs included), in a stable order:
 * main graph initializers, then Constant nodes in node order, then subgraphs depth-first.
 * The array is owned by the model. */
int mopt_model_weights(mopt_model *m, mopt_weight **list, size_t *n);

/* Decodes a weight's current values to float32 (any numeric dtype, raw_data or typed fields,
 * external data). *out is malloc'd (nelem floats), caller frees. */
int mopt_weight_read_f32(const mopt_model *m, const mopt_weight *w, float **out, mopt_diag *diag);

/* ---- encoders: replace a weight's stored form. Each keeps the graph valid for the model's
 * opset, and the value seen by the consumer equal (up to float rounding) to the decoded values.
 * They may add nodes/initializers named "<name>__mopt_*". ---- */

/* Dense float32 (or the weight's original float dtype: float16/bfloat16/double keep their type)
 * with the given values. Used after pruning / dense clustering. */
int mopt_weight_set_dense(mopt_model *m, const mopt_weight *w, const float *values, mopt_diag *diag);

/* Float16 storage + Cast to float32 in front of the consumer (no-op cast for fp16 models). */
int mopt_weight_set_f16(mopt_model *m, const mopt_weight *w, const uint16_t *halves, mopt_diag *diag);

/* Linear quantization: value = (q - zero_point) * scale.
 * Granularity: axis == -1 → per tensor (n_scales == 1); block_size == 0 → per channel along axis
 * (n_scales == dims[axis]); block_size > 0 → blocks of block_size along axis, scales laid out as
 * the tensor's shape with dims[axis] replaced by ceil(dims[axis] / block_size).
 * q holds one value per element (int8/uint8 range, or the 4-bit range for INT4/UINT4).
 * Encodes as DequantizeLinear where the opset has the form (per-tensor ≥ 10, per-axis ≥ 13,
 * block and 4-bit ≥ 21), otherwise an equivalent Cast + Sub + Mul (+ Reshape for blocks). */
typedef struct mopt_qtensor {
  int32_t qtype;              /* MOPT_DT_INT8, UINT8, INT4, UINT4 */
  int32_t axis;               /* -1 for per tensor */
  int64_t block_size;         /* 0 unless block-wise */
  const int32_t *q;           /* nelem values */
  const float *scales;
  const int32_t *zero_points; /* NULL = all zero (symmetric) */
  size_t n_scales;
} mopt_qtensor;
int mopt_weight_set_quantized(mopt_model *m, const mopt_weight *w, const mopt_qtensor *qt,
                              mopt_diag *diag);

/* The weight's float32 values where they lie in the mapped input (little-endian raw_data of a
 * model from mopt_model_load_file, not yet re-encoded), else NULL. Read-only, valid until the
 * model is destroyed, not necessarily 4-byte aligned. */
const void *mopt_weight_f32_mapped(const mopt_model *m, const mopt_weight *w);
/* mopt_weight_set_quantized where q is not given: it is computed from x (what
 * mopt_weight_f32_mapped returned for w) with qt's scales and zero points (the values
 * mopt_quantize_apply gives), while mopt_model_save_file writes it when the model allows
 * streaming, or at once otherwise. The saved bytes are the same as with the computed q. */
int mopt_weight_set_quantized_from(mopt_model *m, const mopt_weight *w, const mopt_qtensor *qt,
                                   const void *x, mopt_diag *diag);

/* Palettized: value = table[idx] (per tensor, n_tables == 1) or table[c * k + idx] where c is the
 * index along axis (per channel, n_tables == dims[axis]). Stored as uint8 indices (packed 4-bit
 * where the opset allows and k <= 16), rebuilt with Cast(int32) + Gather (+ Add of channel
 * offsets for per-channel tables). The table is float32, or quantized when qt_table != NULL. */
typedef struct mopt_lut {
  int32_t k;                  /* entries per table, 2..256 */
  int32_t axis;               /* -1 per tensor */
  size_t n_tables;
  const uint8_t *idx;         /* nelem indices < k */
  const float *table;         /* n_tables * k entries */
} mopt_lut;
int mopt_weight_set_lut(mopt_model *m, const mopt_weight *w, const mopt_lut *lut, mopt_diag *diag);

/* Low rank: a 2-D weight W[r][c] (as consumed: MatMul B or Gemm B with transB respected) is
 * replaced by A[r][rank] x B[rank][c], as two initializers and an extra MatMul feeding the
 * consumer. Only for 2-D MatMul/Gemm weights. */
int mopt_weight_set_lowrank(mopt_model *m, const mopt_weight *w, int64_t rank, const float *a,
                            const float *b, mopt_diag *diag);

/* Removes initializers/Constant nodes no longer referenced; call once after encoding. */
int mopt_model_prune_unused(mopt_model *m);

/* ---------------------------------------------------------------- job spec ---- */
typedef enum { MOPT_PASS_PRUNE = 0, MOPT_PASS_CLUSTER = 1, MOPT_PASS_QUANTIZE = 2,
               MOPT_PASS_FP16 = 3, MOPT_PASS_DECOMPOSE = 4 } mopt_pass_op;
typedef enum { MOPT_PRUNE_UNSTRUCTURED = 0, MOPT_PRUNE_NM = 1, MOPT_PRUNE_BLOCK = 2,
               MOPT_PRUNE_CHANNEL = 3 } mopt_prune_pattern;
typedef enum { MOPT_SCOPE_PER_TENSOR = 0, MOPT_SCOPE_GLOBAL = 1 } mopt_prune_scope;
typedef enum { MOPT_INIT_KMEANSPP = 0, MOPT_INIT_LINEAR = 1, MOPT_INIT_DENSITY = 2,
               MOPT_INIT_RANDOM = 3 } mopt_cluster_init;
typedef enum { MOPT_GRAN_PER_TENSOR = 0, MOPT_GRAN_PER_CHANNEL = 1, MOPT_GRAN_BLOCK = 2 } mopt_gran;
typedef enum { MOPT_ENC_LUT = 0, MOPT_ENC_DENSE = 1 } mopt_cluster_enc;
typedef enum { MOPT_ACT_NONE = 0, MOPT_ACT_DYNAMIC = 1 } mopt_act_mode;

typedef struct mopt_pass {
  mopt_pass_op op;
  /* prune */
  double sparsity;            /* 0 <= s < 1 */
  mopt_prune_pattern pattern;
  int32_t nm_n, nm_m;         /* N:M — keep n of every m */
  int32_t block_r, block_c;   /* block:RxC */
  int32_t channel_norm;       /* 1 = L1, 2 = L2 for channel pruning */
  mopt_prune_scope scope;
  /* cluster */
  int32_t clusters;           /* 2..256 */
  mopt_cluster_init init;
  mopt_cluster_enc encoding;
  /* quantize (and cluster granularity) */
  int32_t qtype;              /* MOPT_DT_INT8, UINT8, INT4, UINT4 */
  mopt_gran granularity;
  int32_t block_size;         /* 16..256 */
  int32_t symmetric;
  int32_t mse_search;         /* 1: search the clip range minimizing MSE */
  mopt_act_mode activations;
  /* decompose */
  double energy;              /* 0 < e <= 1, or 0 when rank is given */
  int32_t rank;               /* > 0 fixes the rank */
  /* prune / cluster / quantize: 1 = reuse the anchor model's mask / centroids / scales for tensors
   * of the same name and shape while the pass's bound holds (see mopt_spec.anchor_path) */
  int32_t use_anchor;
  /* the spec's "anchor" as written: "sha256:<64 hex>" or "release:{name}/{channel}" (the API
   * resolves a release to its model id before the job is stored); "" when none */
  char anchor[208];
} mopt_pass;

#define MOPT_MAX_PASSES 16
#define MOPT_MAX_GLOBS 32
typedef struct mopt_spec {
  size_t n_passes;
  mopt_pass passes[MOPT_MAX_PASSES];
  size_t n_include, n_exclude;
  char *include[MOPT_MAX_GLOBS];   /* glob patterns on tensor names; none = all */
  char *exclude[MOPT_MAX_GLOBS];
  uint64_t min_elements;           /* default 1024 */
  uint64_t seed;
  /* Anchored optimization: path of an earlier optimized model whose parameters passes with
   * use_anchor reuse (not owned; NULL = none). Bounds: quantize keeps the anchor's scales/zero
   * points when the SNR with them is within 0.5 dB of fresh ones, cluster keeps its centroids
   * when the inertia is within 2% of fresh k-means, prune keeps its mask when the kept L1 is
   * within 2% of the fresh mask's (and it zeroes at least as many elements). */
  const char *anchor_path;
} mopt_spec;

/* Fills defaults (no passes, include all, min_elements 1024, seed 0). */
void mopt_spec_init(mopt_spec *s);
/* Frees the glob strings (which the spec owns). */
void mopt_spec_free(mopt_spec *s);

/* ---------------------------------------------------------------- pipeline ---- */
/* Progress callback: fraction in [0,1] and a short step label; return non-zero to cancel. */
typedef int (*mopt_progress_fn)(double fraction, const char *step, void *ctx);

/* Runs spec on m in place (decode selected weights → passes in order → encode).
 * *report_json receives a malloc'd JSON report (see DESIGN.md), caller frees; may be NULL.
 * Deterministic: same model bytes + same spec + same MOPT_VERSION give identical output.
 * Returns 0, MOPT_ECANCELLED, or an error with diag. */
int mopt_pipeline_run(mopt_model *m, const mopt_spec *spec, mopt_progress_fn progress,
                      void *progress_ctx, char **report_json, mopt_diag *diag);

/* SHA-256 of a buffer as 64 lowercase hex chars + NUL (libsodium). */
void mopt_sha256_hex(const uint8_t *data, size_t len, char out[65]);

#endif
