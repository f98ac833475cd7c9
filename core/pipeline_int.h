/* pipeline_int.h — the pipeline's report records and the JSON writer (pipeline.c, report.c),
 * and the dynamic-quantization rewrite (dynamic.c). Internal to core/.
 * Trade-off: the report is collected as small fixed records while tensors stream by and rendered
 * once at the end (memory: one record per selected tensor) rather than written incrementally, so
 * a failed or cancelled run leaves no partial JSON. */
#ifndef MOPT_PIPELINE_INT_H
#define MOPT_PIPELINE_INT_H

#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "mopt.h"
#include "sb.h"

/* One tensor after one pass. */
typedef struct mopt_rep_tpass {
  double sparsity;
  uint64_t distinct;
  char note[96];              /* why a pass skipped or changed what it did; "" when plain */
} mopt_rep_tpass;

typedef struct mopt_rep_tensor {
  char *name, *graph_path, *consumer;   /* owned copies */
  int32_t loc;
  int32_t ndim;
  int64_t dims[8];
  int32_t dtype_before;
  char dtype_after[16];
  const char *encoding;       /* "unchanged", "dense", "quantized", "lut", "float16", "lowrank", "dynamic" */
  uint64_t bytes_before, bytes_after;
  double sparsity_before, sparsity;
  uint64_t distinct_before, distinct;
  double snr_db, max_abs_err;
  uint64_t fp16_clamped;
  int64_t rank;
  int anchored;               /* a pass reused the anchor model's scales / centroids / mask */
  size_t n_passes;
  mopt_rep_tpass passes[MOPT_MAX_PASSES];
} mopt_rep_tensor;

typedef struct mopt_rep_pass {
  int32_t op;
  double time_ms;
  uint64_t tensors;                     /* tensors the pass changed or visited */
  uint64_t elems, zeros_before, zeros_after;
  uint64_t distinct_before, distinct_after;   /* sums over tensors */
} mopt_rep_pass;

typedef struct mopt_report {
  size_t n_tensors, cap_tensors;
  mopt_rep_tensor *t;
  size_t n_passes;
  mopt_rep_pass p[MOPT_MAX_PASSES];
  uint64_t weights_total;
  uint64_t seed;
  uint64_t file_bytes_before, file_bytes_after, zstd_bytes_before, zstd_bytes_after;
  uint64_t weight_bytes_before, weight_bytes_after;
  double decode_ms, encode_ms, save_ms, total_ms;
  uint64_t peak_rss_bytes;
} mopt_report;

void mopt_report_free(mopt_report *r);
/* Renders the report; returns a malloc'd NUL-terminated string or NULL on ENOMEM. */
char *mopt_report_json(const mopt_report *r);
/* Serialized size of the model and its zstd level-3 compressed size, computed by streaming the
 * protobuf encoder through a compressor (no copy of the file is held). */
int mopt_model_measure(const mopt_model *m, uint64_t *bytes, uint64_t *zbytes);
/* 1 with the file's bytes when the model is still exactly the file it was read from (mapped, no
 * external data read in, serializing to the file's size): its "before" sizes can then be taken
 * from those bytes, which no pass changes, while the passes run. 0 otherwise. */
int mopt_model_file_view(const mopt_model *m, const uint8_t **buf, size_t *len);
/* zstd level-3 compressed size of buf, as mopt_model_measure counts it; 0 when compression
 * fails or *stop becomes non-zero (checked every MiB; stop may be NULL). */
uint64_t mopt_zstd_size(const uint8_t *buf, size_t len, atomic_int *stop);
/* Peak resident set size of this process in bytes (getrusage). */
uint64_t mopt_peak_rss(void);
/* Short name of a pass op ("prune", …). */
const char *mopt_pass_name(int32_t op);

/* Dynamic quantization (dynamic.c). dynamic_ok: 1 when w's consumer can be rewritten to
 * DynamicQuantizeLinear + MatMulInteger at this opset, else 0 with *why saying what happens
 * instead. set_dynamic: rewrites the consumer using qt (int8/uint8, per tensor or per output
 * column, in w's stored layout); the float weight becomes unreferenced. */
int mopt_int_dynamic_ok(mopt_model *m, const mopt_weight *w, int64_t opset, const char **why);
int mopt_int_set_dynamic(mopt_model *m, const mopt_weight *w, const mopt_qtensor *qt,
                         mopt_diag *diag);

/* Anchored optimization (anchor.c): parameters an earlier optimized model `a` stored for the
 * tensor of w's name and shape (main graph). Each returns 1 when found and stored in exactly the
 * layout asked for, 0 when not (no such tensor, other form or layout), MOPT_ENOMEM.
 * values: the anchor's decoded values (malloc'd, w->nelem floats) for its zero mask.
 * qparams: ng scales and zero points for (qtype, axis, block size) as mopt_qtensor lays them out,
 *   and when q_out is not NULL the anchor's w->nelem quantized integers.
 * table: the n_tables * *k centroid table (malloc'd, entries in the anchor's stored order). */
int mopt_anchor_values(const mopt_model *a, const mopt_weight *w, float **vals);
int mopt_anchor_qparams(const mopt_model *a, const mopt_weight *w, int32_t qtype, int32_t axis,
                        int64_t block, size_t ng, float *scales, int32_t *zps, int32_t *q_out);
int mopt_anchor_table(const mopt_model *a, const mopt_weight *w, int32_t axis, size_t n_tables,
                      int32_t *k, float **table);

#endif
