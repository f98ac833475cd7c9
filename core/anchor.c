/* anchor.c — reads the parameters an earlier optimized model (the anchor) stored for a tensor:
 * quantization scales / zero points from the "<name>__mopt_scale" / "__mopt_zp" initializers
 * (DequantizeLinear form or the Cast/Sub/Mul fallback), centroid tables from the LUT form
 * ("__mopt_table" with "__mopt_idx"), and decoded values (for a pruning mask) by evaluating the
 * rebuild chain. The pipeline reuses them so the next version's encoded bytes stay the same.
 * Trade-off: the anchor is matched by value name and shape in the main graph only, and only when
 * its stored layout equals the one the current pass would write (same quantized type, axis,
 * block size, table count); anything else is treated as "no anchor" rather than converted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model_int.h"
#include "pipeline_int.h"

static char *suffixed(const char *base, const char *what) {
  size_t len = strlen(base) + strlen(what) + 8;
  char *s = malloc(len);
  if (s) snprintf(s, len, "%s__mopt_%s", base, what);
  return s;
}

/* Initializer "<base>__mopt_<what>" (or base itself when what is NULL) of g, NULL if absent. */
static const Onnx__TensorProto *find_init(const Onnx__GraphProto *g, const char *base,
                                          const char *what) {
  char *name = what ? suffixed(base, what) : strdup(base);
  const Onnx__TensorProto *t = NULL;
  for (size_t i = 0; name && !t && i < g->n_initializer; i++)
    if (g->initializer[i]->name && strcmp(g->initializer[i]->name, name) == 0) t = g->initializer[i];
  free(name);
  return t;
}

static const Onnx__NodeProto *find_node(const Onnx__GraphProto *g, const char *base,
                                        const char *what) {
  char *name = suffixed(base, what);
  const Onnx__NodeProto *n = NULL;
  for (size_t i = 0; name && !n && i < g->n_node; i++)
    if (g->node[i]->name && strcmp(g->node[i]->name, name) == 0) n = g->node[i];
  free(name);
  return n;
}

static int same_dims(const Onnx__TensorProto *t, const int64_t *dims, int32_t nd) {
  if (!t || (int32_t)t->n_dims != nd) return 0;
  for (int32_t i = 0; i < nd; i++)
    if (t->dims[i] != dims[i]) return 0;
  return 1;
}

static const Onnx__GraphProto *anchor_graph(const mopt_model *a, const mopt_weight *w) {
  if (!a || !a->pb || !a->pb->graph || !w->graph_path || strcmp(w->graph_path, "main") != 0)
    return NULL;
  return a->pb->graph;
}

int mopt_anchor_values(const mopt_model *a, const mopt_weight *w, float **vals) {
  *vals = NULL;
  const Onnx__GraphProto *g = anchor_graph(a, w);
  if (!g) return 0;
  static const char *const forms[] = {"q", "idx", "f16"};
  int found = same_dims(find_init(g, w->name, NULL), w->dims, w->ndim);
  for (size_t i = 0; i < sizeof forms / sizeof *forms && !found; i++)
    found = same_dims(find_init(g, w->name, forms[i]), w->dims, w->ndim);
  if (!found) return 0;
  float *v = malloc(w->nelem ? w->nelem * sizeof *v : 1);
  if (!v) return MOPT_ENOMEM;
  mopt_diag d;
  memset(&d, 0, sizeof d);
  if (mopt_int_eval_value(g, w->name, v, w->nelem, &d) != 0) {
    free(v);
    return 0;                       /* not a form we can evaluate: no anchor */
  }
  *vals = v;
  return 1;
}

int mopt_anchor_qparams(const mopt_model *a, const mopt_weight *w, int32_t qtype, int32_t axis,
                        int64_t block, size_t ng, float *scales, int32_t *zps, int32_t *q_out) {
  const Onnx__GraphProto *g = anchor_graph(a, w);
  if (!g) return 0;
  const Onnx__TensorProto *q = find_init(g, w->name, "q"), *sc = find_init(g, w->name, "scale");
  const Onnx__TensorProto *zp = find_init(g, w->name, "zp");
  if (!same_dims(q, w->dims, w->ndim) || !sc || !sc->has_data_type ||
      sc->data_type != MOPT_DT_FLOAT || mopt_int_tensor_nelem(sc) != (int64_t)ng)
    return 0;
  if (zp && mopt_int_tensor_nelem(zp) != (int64_t)ng) return 0;
  int64_t dax = axis >= 0 ? w->dims[axis] : 1;
  const Onnx__NodeProto *dq = find_node(g, w->name, "dq");
  if (dq) {                         /* DequantizeLinear: same type, axis and block size */
    if (q->data_type != qtype) return 0;
    const Onnx__AttributeProto *ax = mopt_int_node_attr(dq, "axis");
    const Onnx__AttributeProto *bs = mopt_int_node_attr(dq, "block_size");
    if (axis >= 0 && (!ax || ax->i != axis)) return 0;
    if ((bs ? bs->i : 0) != block) return 0;
  } else {                          /* Cast/Sub/Mul fallback: storage type and scale shape */
    if (!find_node(g, w->name, "mul_scale")) return 0;
    int32_t st = qtype == MOPT_DT_INT8 || qtype == MOPT_DT_INT4 ? MOPT_DT_INT8 : MOPT_DT_UINT8;
    if (q->data_type != st) return 0;
    int64_t sd[8];
    int32_t snd = axis < 0 ? 0 : w->ndim;
    for (int32_t i = 0; i < snd; i++)
      sd[i] = i != axis ? (block ? w->dims[i] : 1) : block ? (dax + block - 1) / block : dax;
    if (!same_dims(sc, sd, snd)) return 0;
    if (block) {                    /* the Gather indices fix the block size */
      const Onnx__TensorProto *bi = find_init(g, w->name, "block_idx");
      if (!bi || mopt_int_tensor_nelem(bi) != dax) return 0;
      int64_t *iv = malloc((size_t)dax * sizeof *iv);
      if (!iv) return MOPT_ENOMEM;
      int ok = mopt_int_tensor_to_i64(bi, iv, (uint64_t)dax, NULL) == 0;
      for (int64_t i = 0; ok && i < dax; i++) ok = iv[i] == i / block;
      free(iv);
      if (!ok) return 0;
    }
  }
  int32_t lo, hi;
  if (mopt_qrange(qtype, &lo, &hi)) return 0;
  if (mopt_int_tensor_to_f32(sc, scales, ng, NULL)) return 0;
  float *zf = malloc(ng * sizeof *zf);
  if (!zf) return MOPT_ENOMEM;
  int ok = 1;
  if (zp) ok = mopt_int_tensor_to_f32(zp, zf, ng, NULL) == 0;
  for (size_t i = 0; ok && i < ng; i++) {
    zps[i] = zp ? (int32_t)zf[i] : 0;
    ok = zps[i] >= lo && zps[i] <= hi && (float)zps[i] == (zp ? zf[i] : 0.0f) &&
         scales[i] > 0.0f && isfinite(scales[i]);
  }
  free(zf);
  if (ok && q_out) {                /* the anchor's integers (stored type, w's layout) */
    float *qf = malloc(w->nelem ? w->nelem * sizeof *qf : 1);
    if (!qf) return MOPT_ENOMEM;
    ok = mopt_int_tensor_to_f32(q, qf, w->nelem, NULL) == 0;
    for (uint64_t i = 0; ok && i < w->nelem; i++) q_out[i] = (int32_t)qf[i];
    free(qf);
  }
  return ok;
}

int mopt_anchor_table(const mopt_model *a, const mopt_weight *w, int32_t axis, size_t n_tables,
                      int32_t *k, float **table) {
  *table = NULL;
  const Onnx__GraphProto *g = anchor_graph(a, w);
  if (!g) return 0;
  const Onnx__TensorProto *ix = find_init(g, w->name, "idx"), *tb = find_init(g, w->name, "table");
  const Onnx__TensorProto *off = find_init(g, w->name, "offsets");
  if (!same_dims(ix, w->dims, w->ndim) || !tb || tb->n_dims != 1 ||
      tb->data_type != MOPT_DT_FLOAT || (axis < 0) != (off == NULL))
    return 0;
  if (off) {
    int64_t od[8];
    for (int32_t i = 0; i < w->ndim; i++) od[i] = i == axis ? (int64_t)n_tables : 1;
    if (!same_dims(off, od, w->ndim)) return 0;
  }
  int64_t tl = mopt_int_tensor_nelem(tb);
  if (tl <= 0 || n_tables == 0 || tl % (int64_t)n_tables) return 0;
  int64_t kk = tl / (int64_t)n_tables;
  if (kk < 2 || kk > 256) return 0;
  float *t = malloc((size_t)tl * sizeof *t);
  if (!t) return MOPT_ENOMEM;
  if (mopt_int_tensor_to_f32(tb, t, (uint64_t)tl, NULL)) { free(t); return 0; }
  *k = (int32_t)kk;
  *table = t;
  return 1;
}
