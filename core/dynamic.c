/* dynamic.c — dynamic quantization of MatMul/Gemm weights (activations: "dynamic"): the consumer
 * is rewritten so ONNX Runtime runs an integer matrix product with activations quantized at run
 * time:
 *
 *     Xq, Xs, Xz = DynamicQuantizeLinear(X)
 *     Yi = MatMulInteger(Xq, Wq, Xz [, Wz])           Wq int8/uint8 [K, N] initializer
 *     Y  = Cast(Yi, float) * (Xs * Ws)                Ws per column [N] or scalar
 *     (+ C for a Gemm with a bias)
 *
 * The consumer node itself becomes the last Mul (or Add), so pointers to it stay valid; the
 * float weight is left unreferenced and mopt_model_prune_unused() removes it.
 * Trade-off: only the plain forms are rewritten (MatMul with the weight as direct input B;
 * Gemm with alpha = beta = 1, transA = 0); anything else falls back to weight-only
 * quantization, which the report notes. DynamicQuantizeLinear needs opset 11.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_int.h"
#include "pipeline_int.h"

static Onnx__GraphProto *graph_of(Onnx__GraphProto *g, const Onnx__NodeProto *n, int depth) {
  if (!g || depth > 64) return NULL;
  for (size_t i = 0; i < g->n_node; i++) {
    if (g->node[i] == n) return g;
    for (size_t a = 0; a < g->node[i]->n_attribute; a++) {
      const Onnx__AttributeProto *at = g->node[i]->attribute[a];
      Onnx__GraphProto *r = graph_of(at->g, n, depth + 1);
      if (r) return r;
      for (size_t k = 0; k < at->n_graphs; k++)
        if ((r = graph_of(at->graphs[k], n, depth + 1))) return r;
    }
  }
  return NULL;
}

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *n, const char *name) {
  for (size_t i = 0; i < n->n_attribute; i++)
    if (n->attribute[i]->name && !strcmp(n->attribute[i]->name, name)) return n->attribute[i];
  return NULL;
}

int mopt_int_dynamic_ok(mopt_model *m, const mopt_weight *w, int64_t opset, const char **why) {
  const mopt_wrec *r = &m->wr[w->index];
  const Onnx__NodeProto *n = r->consumer;
  *why = NULL;
  if (opset < 11) { *why = "opset < 11 has no DynamicQuantizeLinear: weight-only"; return 0; }
  if (w->dtype != MOPT_DT_FLOAT || w->ndim != 2 || !n || !n->op_type || w->consumer_input != 1 ||
      n->n_input < 2 || !n->input[1] || strcmp(n->input[1], w->name) != 0 ||
      (n->domain && n->domain[0]) || n->n_output != 1) {
    *why = "not a direct float MatMul/Gemm weight: weight-only";
    return 0;
  }
  if (!strcmp(n->op_type, "Gemm")) {
    const Onnx__AttributeProto *a;
    if (((a = attr(n, "alpha")) && a->f != 1.0f) || ((a = attr(n, "beta")) && a->f != 1.0f) ||
        ((a = attr(n, "transA")) && a->i != 0)) {
      *why = "Gemm with alpha/beta != 1 or transA: weight-only";
      return 0;
    }
  } else if (strcmp(n->op_type, "MatMul") != 0) {
    *why = "consumer is not MatMul/Gemm: weight-only";
    return 0;
  }
  if (!graph_of(m->pb->graph, n, 0)) { *why = "consumer not found: weight-only"; return 0; }
  return 1;
}

typedef struct dyn_emit {
  Onnx__NodeProto *n[8];
  int nn;
  Onnx__TensorProto *t[4];
  int nt;
  int oom;
} dyn_emit;

static char *nm(const char *base, const char *what) {
  size_t len = strlen(base) + strlen(what) + 16;
  char *s = malloc(len);
  if (s) snprintf(s, len, "%s__mopt_dyn_%s", base, what);
  return s;
}

static Onnx__NodeProto *node(dyn_emit *e, const char *op, const char *const *in, int nin,
                             const char *const *out, int nout, const char *name) {
  Onnx__NodeProto *n = e->nn < 8 ? calloc(1, sizeof *n) : NULL;
  if (!n) { e->oom = 1; return NULL; }
  onnx__node_proto__init(n);
  e->n[e->nn++] = n;
  n->op_type = strdup(op);
  n->name = strdup(name);
  n->input = calloc((size_t)nin, sizeof(char *));
  n->output = calloc((size_t)nout, sizeof(char *));
  if (!n->op_type || !n->name || !n->input || !n->output) { e->oom = 1; return n; }
  for (int i = 0; i < nin; i++) {
    if (!(n->input[i] = strdup(in[i]))) { e->oom = 1; return n; }
    n->n_input++;
  }
  for (int i = 0; i < nout; i++) {
    if (!(n->output[i] = strdup(out[i]))) { e->oom = 1; return n; }
    n->n_output++;
  }
  return n;
}

static void add_int_attr(dyn_emit *e, Onnx__NodeProto *n, const char *name, int64_t v) {
  if (!n) return;
  Onnx__AttributeProto *a = calloc(1, sizeof *a);
  Onnx__AttributeProto **na = a ? realloc(n->attribute, (n->n_attribute + 1) * sizeof *na) : NULL;
  if (!a || !na) { free(a); e->oom = 1; return; }
  onnx__attribute_proto__init(a);
  a->name = strdup(name);
  if (!a->name) { free(a); e->oom = 1; n->attribute = na; return; }
  a->has_type = 1;
  a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
  a->has_i = 1;
  a->i = v;
  n->attribute = na;
  n->attribute[n->n_attribute++] = a;
}

static Onnx__TensorProto *tensor(dyn_emit *e, const char *name, int32_t dt, const int64_t *dims,
                                 int nd, void *data, size_t len) {
  Onnx__TensorProto *t = e->nt < 4 ? calloc(1, sizeof *t) : NULL;
  int64_t *d = calloc((size_t)(nd ? nd : 1), sizeof *d);
  char *nmc = name ? strdup(name) : NULL;
  if (!t || !d || !nmc || !data) { free(t); free(d); free(nmc); free(data); e->oom = 1; return NULL; }
  onnx__tensor_proto__init(t);
  t->name = nmc;
  t->has_data_type = 1;
  t->data_type = dt;
  memcpy(d, dims, (size_t)nd * sizeof *d);
  t->dims = d;
  t->n_dims = (size_t)nd;
  if (!nd) { free(d); t->dims = NULL; }
  t->has_raw_data = 1;
  t->raw_data.data = data;
  t->raw_data.len = len;
  e->t[e->nt++] = t;
  return t;
}

static void emit_drop(dyn_emit *e) {
  for (int i = 0; i < e->nn; i++) protobuf_c_message_free_unpacked(&e->n[i]->base, NULL);
  for (int i = 0; i < e->nt; i++) protobuf_c_message_free_unpacked(&e->t[i]->base, NULL);
  e->nn = e->nt = 0;
}

int mopt_int_set_dynamic(mopt_model *m, const mopt_weight *w, const mopt_qtensor *qt,
                         mopt_diag *diag) {
  mopt_wrec *r = &m->wr[w->index];
  Onnx__NodeProto *cn = r->consumer;
  Onnx__GraphProto *g = cn ? graph_of(m->pb->graph, cn, 0) : NULL;
  if (!g) return mopt_diag_set(diag, MOPT_EINTERNAL, w->name, "consumer node not found");
  if (qt->qtype != MOPT_DT_INT8 && qt->qtype != MOPT_DT_UINT8)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "dynamic quantization needs int8/uint8");
  int gemm = !strcmp(cn->op_type, "Gemm");
  const Onnx__AttributeProto *tb = gemm ? attr(cn, "transB") : NULL;
  int trans = tb && tb->i != 0;
  int64_t K = trans ? w->dims[1] : w->dims[0], N = trans ? w->dims[0] : w->dims[1];
  /* per column along N (the consumer's output channels) or one scale */
  if (!(qt->n_scales == 1 || (qt->n_scales == (size_t)N && qt->block_size == 0)))
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "dynamic quantization needs per-tensor or per-column scales");
  uint8_t *wq = malloc((size_t)(K * N));
  float *ws = malloc(qt->n_scales * sizeof *ws);
  uint8_t *wz = qt->zero_points ? malloc(qt->n_scales) : NULL;
  if (!wq || !ws || (qt->zero_points && !wz)) { free(wq); free(ws); free(wz); return MOPT_ENOMEM; }
  for (int64_t k = 0; k < K; k++)
    for (int64_t j = 0; j < N; j++)
      wq[k * N + j] = (uint8_t)(qt->q[trans ? j * K + k : k * N + j] & 0xff);
  memcpy(ws, qt->scales, qt->n_scales * sizeof *ws);
  for (size_t i = 0; wz && i < qt->n_scales; i++) wz[i] = (uint8_t)(qt->zero_points[i] & 0xff);

  const char *y = cn->output[0];
  enum { WQ, WS, WZ, XQ, XS, XZ, YI, YF, SC, YM, DQL, MMI, CAST, MULS, MUL, NNAMES };
  static const char *const tag[NNAMES] = {"wq", "ws", "wz", "xq", "xs", "xz", "yi", "yf", "scale",
                                          "ym", "dql", "mmi", "cast", "mul_scale", "mul"};
  char *nmv[NNAMES];
  int oom = 0;
  for (int i = 0; i < NNAMES; i++) oom |= !(nmv[i] = nm(y, tag[i]));
  int has_bias = gemm && cn->n_input > 2 && cn->input[2] && cn->input[2][0];
  char *op = strdup(has_bias ? "Add" : "Mul");
  char *bias = has_bias ? strdup(cn->input[2]) : NULL;
  oom |= !op || (has_bias && !bias);
  dyn_emit e = {0};
  int64_t wd[2] = {K, N}, sd[1] = {(int64_t)qt->n_scales};
  int sn = qt->n_scales == 1 ? 0 : 1;
  e.oom = oom;
  tensor(&e, nmv[WQ], qt->qtype, wd, 2, wq, (size_t)(K * N));
  tensor(&e, nmv[WS], MOPT_DT_FLOAT, sd, sn, ws, qt->n_scales * sizeof *ws);
  if (wz) tensor(&e, nmv[WZ], qt->qtype, sd, sn, wz, qt->n_scales);
  Onnx__NodeProto **nn = NULL;
  Onnx__TensorProto **ni = NULL;
  if (!e.oom) {
    const char *in0[1] = {cn->input[0]}, *out0[3] = {nmv[XQ], nmv[XS], nmv[XZ]};
    node(&e, "DynamicQuantizeLinear", in0, 1, out0, 3, nmv[DQL]);
    const char *in1[4] = {nmv[XQ], nmv[WQ], nmv[XZ], nmv[WZ]}, *out1[1] = {nmv[YI]};
    node(&e, "MatMulInteger", in1, wz ? 4 : 3, out1, 1, nmv[MMI]);
    const char *in2[1] = {nmv[YI]}, *out2[1] = {nmv[YF]};
    add_int_attr(&e, node(&e, "Cast", in2, 1, out2, 1, nmv[CAST]), "to", MOPT_DT_FLOAT);
    const char *in3[2] = {nmv[XS], nmv[WS]}, *out3[1] = {nmv[SC]};
    node(&e, "Mul", in3, 2, out3, 1, nmv[MULS]);
    if (has_bias) {           /* Ym = Yf * S; the consumer becomes Add(Ym, C) */
      const char *in4[2] = {nmv[YF], nmv[SC]}, *out4[1] = {nmv[YM]};
      node(&e, "Mul", in4, 2, out4, 1, nmv[MUL]);
    }
    ni = realloc(g->initializer, (g->n_initializer + (size_t)e.nt) * sizeof *ni);
    if (ni) g->initializer = ni;
    nn = malloc((g->n_node + (size_t)e.nn) * sizeof *nn);
  }
  if (e.oom || !ni || !nn) {
    emit_drop(&e);
    free(nn);
    free(op);
    free(bias);
    for (int i = 0; i < NNAMES; i++) free(nmv[i]);
    return MOPT_ENOMEM;
  }
  /* commit: tensors appended to the consumer's graph, nodes inserted before the consumer */
  for (int i = 0; i < e.nt; i++) g->initializer[g->n_initializer++] = e.t[i];
  size_t pos = 0;
  while (pos < g->n_node && g->node[pos] != cn) pos++;
  size_t k = 0;
  for (size_t i = 0; i < pos; i++) nn[k++] = g->node[i];
  for (int i = 0; i < e.nn; i++) nn[k++] = e.n[i];
  for (size_t i = pos; i < g->n_node; i++) nn[k++] = g->node[i];
  free(g->node);
  g->node = nn;
  g->n_node = k;
  /* the consumer itself becomes the last Mul (or the bias Add): pointers to it stay valid */
  for (size_t i = 0; i < cn->n_attribute; i++)
    protobuf_c_message_free_unpacked(&cn->attribute[i]->base, NULL);
  free(cn->attribute);
  cn->attribute = NULL;
  cn->n_attribute = 0;
  for (size_t i = 0; i < cn->n_input; i++) free(cn->input[i]);
  free(cn->op_type);
  cn->op_type = op;
  cn->input[0] = has_bias ? nmv[YM] : nmv[YF];
  cn->input[1] = has_bias ? bias : nmv[SC];
  cn->n_input = 2;
  if (has_bias) nmv[YM] = NULL; else nmv[YF] = nmv[SC] = NULL;
  for (int i = 0; i < NNAMES; i++) free(nmv[i]);
  return 0;
}
