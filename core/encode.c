/* encode.c — encoders: write a weight's compressed form back into the graph.
 *
 * Every encoder builds the new tensors and rebuild nodes first, then commits them in one step:
 *   - initializer weights: the initializer is replaced (in place in graph.initializer) by the
 *     encoded initializers, and the rebuild nodes are inserted at the START of the owning
 *     graph's node list, so topological order holds; a graph.input entry of the same name
 *     (IR < 4 style) is dropped;
 *   - Constant-node weights: the node is replaced in place by Constant nodes holding the
 *     encoded tensors followed by the rebuild nodes.
 * The last rebuild node produces the original value name, so consumers are untouched (except
 * the low-rank MatMul/Gemm rewrite, which changes the consumer's inputs). Which ONNX form is
 * emitted depends on the default-domain opset: DequantizeLinear where the opset has the form,
 * else Cast + Sub + Mul (+ Gather of block scales).
 * Trade-off: rebuild chains are evaluated once by ONNX Runtime's constant folding, so they favour
 * the simplest ops every opset from 9 has over the most compact graph.
 * mopt_int_eval_encoded() evaluates the rebuild nodes with ONNX semantics (a tiny interpreter
 * for the ops used here), which is what read_f32 returns for an encoded weight.
 */
#include "model_int.h"
#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ builders ==== */
typedef struct emit {
  Onnx__TensorProto *t[8];
  int nt;
  Onnx__NodeProto *n[12];
  int nn;
  int oom;
} emit;

static char *xstrdup(const char *s) { return strdup(s ? s : ""); }

static char *mkname(const char *base, const char *what) {
  size_t len = strlen(base) + strlen(what) + 8;
  char *s = malloc(len);
  if (s) snprintf(s, len, "%s__mopt_%s", base, what);
  return s;
}

static void emit_free(emit *e) {
  for (int i = 0; i < e->nt; i++)
    if (e->t[i]) protobuf_c_message_free_unpacked(&e->t[i]->base, NULL);
  for (int i = 0; i < e->nn; i++)
    if (e->n[i]) protobuf_c_message_free_unpacked(&e->n[i]->base, NULL);
  e->nt = e->nn = 0;
}

/* New tensor; takes ownership of data (malloc'd, len bytes). */
static Onnx__TensorProto *emit_tensor(emit *e, char *name, int32_t dt, const int64_t *dims, int nd,
                                      void *data, size_t len) {
  Onnx__TensorProto *t = malloc(sizeof *t);
  int64_t *d = malloc(sizeof(int64_t) * (size_t)(nd ? nd : 1));
  if (!t || !d || !name || (!data && len) || e->nt == 8) {
    free(t); free(d); free(name); free(data);
    e->oom = 1;
    return NULL;
  }
  onnx__tensor_proto__init(t);
  t->name = name;
  t->has_data_type = 1;
  t->data_type = dt;
  for (int i = 0; i < nd; i++) d[i] = dims[i];
  t->n_dims = (size_t)nd;
  t->dims = d;
  if (!nd) { free(d); t->dims = NULL; }
  t->has_raw_data = 1;
  t->raw_data.data = data ? data : malloc(1);
  t->raw_data.len = len;
  if (!t->raw_data.data) e->oom = 1;
  e->t[e->nt++] = t;
  return t;
}

static Onnx__AttributeProto *new_attr(const char *name, Onnx__AttributeProto__AttributeType type) {
  Onnx__AttributeProto *a = malloc(sizeof *a);
  if (!a) return NULL;
  onnx__attribute_proto__init(a);
  a->name = xstrdup(name);
  if (!a->name) { free(a); return NULL; }
  a->has_type = 1;
  a->type = type;
  return a;
}

static int node_push_attr(Onnx__NodeProto *n, Onnx__AttributeProto *a) {
  if (!a) return MOPT_ENOMEM;
  Onnx__AttributeProto **na = realloc(n->attribute, (n->n_attribute + 1) * sizeof *na);
  if (!na) { protobuf_c_message_free_unpacked(&a->base, NULL); return MOPT_ENOMEM; }
  n->attribute = na;
  n->attribute[n->n_attribute++] = a;
  return 0;
}

static void node_attr_int(emit *e, Onnx__NodeProto *n, const char *name, int64_t v) {
  if (!n) return;
  Onnx__AttributeProto *a = new_attr(name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
  if (a) { a->has_i = 1; a->i = v; }
  if (node_push_attr(n, a)) e->oom = 1;
}

/* New node op(inputs) -> output; names are copied; the node is named "<output>__node"? No:
 * nodes are named after the value they produce plus the op, which is unique per weight. */
static Onnx__NodeProto *emit_node(emit *e, const char *op, const char *const *in, int nin,
                                  const char *out, const char *node_name) {
  Onnx__NodeProto *n = malloc(sizeof *n);
  if (!n || e->nn == 12) { free(n); e->oom = 1; return NULL; }
  onnx__node_proto__init(n);
  e->n[e->nn++] = n;
  n->op_type = xstrdup(op);
  n->name = xstrdup(node_name);
  n->input = calloc((size_t)(nin ? nin : 1), sizeof(char *));
  n->output = calloc(1, sizeof(char *));
  if (!n->op_type || !n->name || !n->input || !n->output) { e->oom = 1; return n; }
  for (int i = 0; i < nin; i++) {
    n->input[i] = xstrdup(in[i]);
    if (!n->input[i]) { e->oom = 1; return n; }
    n->n_input++;
  }
  n->output[0] = xstrdup(out);
  if (!n->output[0]) { e->oom = 1; return n; }
  n->n_output = 1;
  return n;
}

/* Float values → raw bytes of dt (float32/float16/bfloat16/float64). */
static void *pack_float(const float *v, uint64_t n, int32_t dt, size_t *len) {
  size_t es = dt == MOPT_DT_DOUBLE ? 8 : (dt == MOPT_DT_FLOAT16 || dt == MOPT_DT_BFLOAT16) ? 2 : 4;
  uint8_t *b = malloc(n ? n * es : 1);
  if (!b) return NULL;
  for (uint64_t i = 0; i < n; i++) {
    if (dt == MOPT_DT_DOUBLE) { double d = v[i]; memcpy(b + 8 * i, &d, 8); }
    else if (dt == MOPT_DT_FLOAT16) { uint16_t h = mopt_f32_to_f16(v[i]); memcpy(b + 2 * i, &h, 2); }
    else if (dt == MOPT_DT_BFLOAT16) { uint16_t h = mopt_f32_to_bf16(v[i]); memcpy(b + 2 * i, &h, 2); }
    else memcpy(b + 4 * i, &v[i], 4);
  }
  *len = n * es;
  return b;
}

/* Integer values → raw bytes of an 8-bit or packed 4-bit dtype. */
static int is_four_bit(int32_t dt) { return dt == MOPT_DT_INT4 || dt == MOPT_DT_UINT4; }

/* n integers as stored in raw_data of type dt: one byte each, or for 4-bit types element 2i in
 * the low nibble and 2i+1 in the high nibble (ONNX order). */
static void pack_ints_into(const int32_t *v, uint64_t n, int32_t dt, uint8_t *b) {
  if (is_four_bit(dt)) {
    for (uint64_t i = 0; i + 1 < n; i += 2)
      b[i / 2] = (uint8_t)((v[i] & 15) | ((v[i + 1] & 15) << 4));
    if (n & 1) b[n / 2] = (uint8_t)(v[n - 1] & 15);
  } else {
    for (uint64_t i = 0; i < n; i++) b[i] = (uint8_t)v[i];
  }
}

static void *pack_ints(const int32_t *v, uint64_t n, int32_t dt, size_t *len) {
  size_t bytes = is_four_bit(dt) ? (n + 1) / 2 : n;
  uint8_t *b = malloc(bytes ? bytes : 1);
  if (!b) return NULL;
  pack_ints_into(v, n, dt, b);
  *len = bytes;
  return b;
}

/* The quantized payload of one weight, computed a slice at a time from the float32 source
 * (a producer for streamed raw_data, see mopt_int_stream). */
typedef struct qsource {
  const mopt_f32u *x;
  mopt_qlayout l;
  int32_t qtype, store_t;
  uint64_t n;
  float *scales;
  int32_t *zps;
} qsource;

static void qsource_free(void *p) {
  qsource *c = p;
  if (!c) return;
  free(c->scales);
  free(c->zps);
  free(c);
}

static int qsource_produce(void *p, uint64_t off, uint8_t *dst, size_t nbytes) {
  const qsource *c = p;
  enum { CHUNK = 4096 };                       /* even, so 4-bit slices start on a byte */
  int32_t q[CHUNK];
  int four = is_four_bit(c->store_t);
  uint64_t e0 = four ? off * 2 : off, end = four ? (off + nbytes) * 2 : off + nbytes;
  if (end > c->n) end = c->n;
  if (e0 > end) return MOPT_EINTERNAL;
  if (!four) {
    mopt_quantize_apply_range_u8(c->x, &c->l, c->qtype, c->scales, c->zps, e0, end, dst);
    return 0;
  }
  for (uint64_t e = e0; e < end;) {            /* 4-bit: quantize, then pack two per byte */
    uint64_t k = end - e < CHUNK ? end - e : CHUNK;
    mopt_quantize_apply_range(c->x, &c->l, c->qtype, c->scales, c->zps, e, e + k, q);
    pack_ints_into(q, k, c->store_t, dst + (e - e0) / 2);
    e += k;
  }
  return 0;
}

static int is_float_dt(int32_t dt) {
  return dt == MOPT_DT_FLOAT || dt == MOPT_DT_FLOAT16 || dt == MOPT_DT_BFLOAT16 ||
         dt == MOPT_DT_DOUBLE;
}

/* ================================================================ commit ==== */
static int check_weight(mopt_model *m, const mopt_weight *w, mopt_diag *diag) {
  if (!m || !w || w->index >= m->nw || &m->w[w->index] != w)
    return mopt_diag_set(diag, MOPT_EINVAL, w ? w->name : "", "weight does not belong to model");
  const mopt_wrec *r = &m->wr[w->index];
  if (!r->tensor)
    return mopt_diag_set(diag, MOPT_ECONFLICT, w->name,
                         "weight was already re-encoded (or removed); encode each weight once");
  if (!is_float_dt(w->dtype))
    return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name,
                         "only float weights can be re-encoded (this one is %s)",
                         mopt_dtype_name(w->dtype));
  if (m->reserved.slots && mopt_nameset_has(&m->reserved, w->name))
    return mopt_diag_set(diag, MOPT_ECONFLICT, w->name,
                         "the model already has values named \"%s__mopt_*\"; encoding this "
                         "weight would duplicate names", w->name);
  return 0;
}

#define tensor_free(t) mopt_int_free_tensor(m, (t))

/* Wraps tensor t as a Constant node producing t->name. */
static Onnx__NodeProto *const_node(Onnx__TensorProto *t) {
  Onnx__NodeProto *n = malloc(sizeof *n);
  Onnx__AttributeProto *a = new_attr("value", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
  size_t len = strlen(t->name) + 8;
  char *nm = malloc(len);
  if (!n || !a || !nm) {
    free(n); free(nm);
    if (a) protobuf_c_message_free_unpacked(&a->base, NULL);
    return NULL;
  }
  snprintf(nm, len, "%s_const", t->name);
  onnx__node_proto__init(n);
  n->op_type = xstrdup("Constant");
  n->name = nm;
  n->output = malloc(sizeof(char *));
  n->attribute = malloc(sizeof(*n->attribute));
  if (!n->op_type || !n->output || !n->attribute) {
    protobuf_c_message_free_unpacked(&n->base, NULL);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    return NULL;
  }
  n->output[0] = xstrdup(t->name);
  if (!n->output[0]) {
    protobuf_c_message_free_unpacked(&n->base, NULL);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    return NULL;
  }
  n->n_output = 1;
  a->t = t;
  n->attribute[0] = a;
  n->n_attribute = 1;
  return n;
}

static void bump_ir(mopt_model *m, int64_t min_ir) {
  if (!m->pb->has_ir_version || m->pb->ir_version < min_ir) {
    m->pb->has_ir_version = 1;
    m->pb->ir_version = min_ir;
  }
}

/* Puts the emitted tensors and nodes into the graph in place of the weight (see file comment).
 * On success ownership moves to the graph and the original tensor (or Constant node) is freed. */
static int emit_commit(mopt_model *m, const mopt_weight *w, emit *e, mopt_wenc kind) {
  mopt_wrec *r = &m->wr[w->index];
  Onnx__GraphProto *g = r->graph;
  if (e->oom) { emit_free(e); return MOPT_ENOMEM; }
  if (w->loc == MOPT_LOC_INITIALIZER) {
    size_t pos = 0;
    while (pos < g->n_initializer && g->initializer[pos] != r->tensor) pos++;
    if (pos == g->n_initializer) { emit_free(e); return MOPT_EINTERNAL; }
    size_t ni = g->n_initializer - 1 + (size_t)e->nt;
    Onnx__TensorProto **inits = malloc((ni ? ni : 1) * sizeof *inits);
    Onnx__NodeProto **nodes = malloc((g->n_node + (size_t)e->nn) * sizeof *nodes);
    if (!inits || !nodes) { free(inits); free(nodes); emit_free(e); return MOPT_ENOMEM; }
    size_t k = 0;
    for (size_t i = 0; i < pos; i++) inits[k++] = g->initializer[i];
    for (int i = 0; i < e->nt; i++) inits[k++] = e->t[i];
    for (size_t i = pos + 1; i < g->n_initializer; i++) inits[k++] = g->initializer[i];
    k = 0;
    for (int i = 0; i < e->nn; i++) nodes[k++] = e->n[i];
    for (size_t i = 0; i < g->n_node; i++) nodes[k++] = g->node[i];
    tensor_free(r->tensor);
    free(g->initializer);
    g->initializer = inits;
    g->n_initializer = ni;
    free(g->node);
    g->node = nodes;
    g->n_node += (size_t)e->nn;
    /* drop a graph input of the same name (IR < 4 models list initializers as inputs) */
    for (size_t i = 0; i < g->n_input; i++) {
      if (g->input[i]->name && strcmp(g->input[i]->name, w->name) == 0) {
        protobuf_c_message_free_unpacked(&g->input[i]->base, NULL);
        memmove(&g->input[i], &g->input[i + 1], (g->n_input - i - 1) * sizeof *g->input);
        g->n_input--;
        break;
      }
    }
    if (e->nt) bump_ir(m, 4);
  } else {
    size_t pos = 0;
    while (pos < g->n_node && g->node[pos] != r->node) pos++;
    if (pos == g->n_node) { emit_free(e); return MOPT_EINTERNAL; }
    Onnx__NodeProto *consts[8];
    for (int i = 0; i < e->nt; i++) {
      consts[i] = const_node(e->t[i]);
      if (!consts[i]) {
        for (int j = 0; j < i; j++) {
          consts[j]->attribute[0]->t = NULL; /* still owned by e */
          protobuf_c_message_free_unpacked(&consts[j]->base, NULL);
        }
        emit_free(e);
        return MOPT_ENOMEM;
      }
    }
    size_t nn = g->n_node - 1 + (size_t)e->nt + (size_t)e->nn;
    Onnx__NodeProto **nodes = malloc(nn * sizeof *nodes);
    if (!nodes) {
      for (int j = 0; j < e->nt; j++) {
        consts[j]->attribute[0]->t = NULL;
        protobuf_c_message_free_unpacked(&consts[j]->base, NULL);
      }
      emit_free(e);
      return MOPT_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < pos; i++) nodes[k++] = g->node[i];
    for (int i = 0; i < e->nt; i++) nodes[k++] = consts[i];
    for (int i = 0; i < e->nn; i++) nodes[k++] = e->n[i];
    for (size_t i = pos + 1; i < g->n_node; i++) nodes[k++] = g->node[i];
    mopt_int_free_node(m, r->node);
    free(g->node);
    g->node = nodes;
    g->n_node = nn;
    r->node = NULL;
  }
  r->tensor = NULL;
  r->enc = kind;
  e->nt = e->nn = 0;
  return 0;
}

/* Name of the float32 result of a rebuild chain: the weight's own name when it is float32,
 * else an intermediate that a final Cast turns into the original dtype. */
static const char *result_name(emit *e, const mopt_weight *w, char **tmp) {
  *tmp = NULL;
  if (w->dtype == MOPT_DT_FLOAT) return w->name;
  *tmp = mkname(w->name, "f32");
  if (!*tmp) e->oom = 1;
  return *tmp ? *tmp : "";
}

static void emit_final_cast(emit *e, const mopt_weight *w, char *tmp) {
  if (!tmp) return;
  const char *in[1] = {tmp};
  char *nn = mkname(w->name, "cast_out");
  Onnx__NodeProto *n = emit_node(e, "Cast", in, 1, w->name, nn ? nn : "");
  node_attr_int(e, n, "to", w->dtype);
  free(nn);
  free(tmp);
}

/* ================================================================ dense / fp16 ==== */
int mopt_weight_set_dense(mopt_model *m, const mopt_weight *w, const float *values,
                          mopt_diag *diag) {
  int rc = check_weight(m, w, diag);
  if (rc) return rc;
  if (!values && w->nelem) return mopt_diag_set(diag, MOPT_EINVAL, w->name, "no values");
  Onnx__TensorProto *t = m->wr[w->index].tensor;
  size_t len;
  void *b = pack_float(values, w->nelem, w->dtype, &len);
  if (!b) return MOPT_ENOMEM;
  free(t->float_data); t->float_data = NULL; t->n_float_data = 0;
  free(t->int32_data); t->int32_data = NULL; t->n_int32_data = 0;
  free(t->double_data); t->double_data = NULL; t->n_double_data = 0;
  mopt_int_tensor_detach(m, t);
  free(t->raw_data.data);
  t->raw_data.data = b;
  t->raw_data.len = len;
  t->has_raw_data = 1;
  m->wr[w->index].enc = MOPT_WENC_DENSE;
  return 0;
}

int mopt_weight_set_f16(mopt_model *m, const mopt_weight *w, const uint16_t *halves,
                        mopt_diag *diag) {
  int rc = check_weight(m, w, diag);
  if (rc) return rc;
  if (!halves && w->nelem) return mopt_diag_set(diag, MOPT_EINVAL, w->name, "no values");
  size_t len = w->nelem * 2;
  uint8_t *b = malloc(len ? len : 1);
  if (!b) return MOPT_ENOMEM;
  if (len) memcpy(b, halves, len);
  if (w->dtype == MOPT_DT_FLOAT16) { /* already half: just the new values, no Cast */
    Onnx__TensorProto *t = m->wr[w->index].tensor;
    free(t->int32_data); t->int32_data = NULL; t->n_int32_data = 0;
    mopt_int_tensor_detach(m, t);
    free(t->raw_data.data);
    t->raw_data.data = b;
    t->raw_data.len = len;
    t->has_raw_data = 1;
    m->wr[w->index].enc = MOPT_WENC_DENSE;
    return 0;
  }
  emit e = {0};
  char *hn = mkname(w->name, "f16");
  emit_tensor(&e, hn, MOPT_DT_FLOAT16, w->dims, w->ndim, b, len);
  if (e.oom) { emit_free(&e); return MOPT_ENOMEM; }
  char *nn = mkname(w->name, "cast_f16");
  const char *in[1] = {hn ? hn : ""};
  Onnx__NodeProto *n = emit_node(&e, "Cast", in, 1, w->name, nn ? nn : "");
  node_attr_int(&e, n, "to", w->dtype);
  free(nn);
  return emit_commit(m, w, &e, MOPT_WENC_F16);
}

/* ================================================================ quantized ==== */
static int q_range(int32_t qt, int32_t *lo, int32_t *hi) {
  switch (qt) {
  case MOPT_DT_INT8: *lo = -128; *hi = 127; return 0;
  case MOPT_DT_UINT8: *lo = 0; *hi = 255; return 0;
  case MOPT_DT_INT4: *lo = -8; *hi = 7; return 0;
  case MOPT_DT_UINT4: *lo = 0; *hi = 15; return 0;
  default: return -1;
  }
}

static int set_quantized(mopt_model *m, const mopt_weight *w, const mopt_qtensor *qt,
                         const mopt_f32u *src, mopt_diag *diag) {
  int rc = check_weight(m, w, diag);
  if (rc) return rc;
  int32_t lo, hi;
  if (!qt || q_range(qt->qtype, &lo, &hi))
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "quantized type must be int8/uint8/int4/uint4");
  if (qt->axis < -1 || qt->axis >= w->ndim)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "axis %d out of range for %d dims",
                         (int)qt->axis, (int)w->ndim);
  int block = qt->block_size > 0;
  if (block && qt->axis < 0)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "block quantization needs an axis");
  if (qt->block_size < 0) return mopt_diag_set(diag, MOPT_EINVAL, w->name, "negative block size");
  int64_t dax = qt->axis >= 0 ? w->dims[qt->axis] : 1;
  int64_t nb = block ? (dax + qt->block_size - 1) / qt->block_size : dax;
  uint64_t want = qt->axis < 0 ? 1 : (dax ? w->nelem / (uint64_t)dax * (uint64_t)nb : 0);
  if (qt->axis >= 0 && !block) want = (uint64_t)dax;
  if (qt->n_scales != want || (!qt->q && !src) || !qt->scales)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "expected %llu scales, got %zu",
                         (unsigned long long)want, qt->n_scales);
  for (uint64_t i = 0; !src && i < w->nelem; i++)
    if (qt->q[i] < lo || qt->q[i] > hi)
      return mopt_diag_set(diag, MOPT_EINVAL, w->name, "q[%llu] = %d outside [%d, %d]",
                           (unsigned long long)i, (int)qt->q[i], (int)lo, (int)hi);
  for (size_t i = 0; qt->zero_points && i < qt->n_scales; i++)
    if (qt->zero_points[i] < lo || qt->zero_points[i] > hi)
      return mopt_diag_set(diag, MOPT_EINVAL, w->name, "zero point %zu outside the range", i);
  for (size_t i = 0; i < qt->n_scales; i++)
    if (!isfinite(qt->scales[i]))
      return mopt_diag_set(diag, MOPT_EINVAL, w->name, "scale %zu is not finite", i);

  int four = qt->qtype == MOPT_DT_INT4 || qt->qtype == MOPT_DT_UINT4;
  int64_t need = (block || four) ? 21 : qt->axis >= 0 ? 13 : 10;
  int native = m->opset >= need;
  if (!native && m->opset < 7)
    return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name,
                         "default opset %lld has neither DequantizeLinear (10) nor numpy-style "
                         "Mul/Sub (7) to rebuild a quantized weight", (long long)m->opset);
  /* scale/zero-point shapes */
  int64_t sdims[8];
  int snd = 0;
  if (qt->axis < 0) snd = 0;
  else if (block) { snd = w->ndim; memcpy(sdims, w->dims, sizeof sdims); sdims[qt->axis] = nb; }
  else if (native) { snd = 1; sdims[0] = dax; }
  else { snd = w->ndim; for (int i = 0; i < snd; i++) sdims[i] = i == qt->axis ? dax : 1; }

  emit e = {0};
  char *tmp;
  const char *res = result_name(&e, w, &tmp);
  int32_t store_t = native ? qt->qtype
                  : (qt->qtype == MOPT_DT_INT8 || qt->qtype == MOPT_DT_INT4) ? MOPT_DT_INT8
                                                                              : MOPT_DT_UINT8;
  size_t len;
  /* from a source: an empty payload now, filled in after the commit (below) */
  void *qb = src ? malloc(1) : pack_ints(qt->q, w->nelem, store_t, &len);
  size_t qlen = is_four_bit(store_t) ? (w->nelem + 1) / 2 : w->nelem;
  if (src) len = 0;
  char *qn = mkname(w->name, "q");
  Onnx__TensorProto *qtensor = emit_tensor(&e, qn, store_t, w->dims, w->ndim, qb, len);
  float *sc = malloc(qt->n_scales * sizeof *sc);
  if (sc) memcpy(sc, qt->scales, qt->n_scales * sizeof *sc);
  char *sn = mkname(w->name, "scale");
  emit_tensor(&e, sn, MOPT_DT_FLOAT, sdims, snd, sc, qt->n_scales * 4);
  char *zn = NULL;
  if (qt->zero_points) {
    zn = mkname(w->name, "zp");
    if (native) {
      void *zb = pack_ints(qt->zero_points, qt->n_scales, qt->qtype, &len);
      emit_tensor(&e, zn, qt->qtype, sdims, snd, zb, len);
    } else {
      float *zf = malloc(qt->n_scales * sizeof *zf);
      for (size_t i = 0; zf && i < qt->n_scales; i++) zf[i] = (float)qt->zero_points[i];
      emit_tensor(&e, zn, MOPT_DT_FLOAT, sdims, snd, zf, qt->n_scales * 4);
    }
  }
  if (e.oom) { free(tmp); emit_free(&e); return MOPT_ENOMEM; }
  if (native) {
    const char *in[3] = {qn, sn, zn};
    char *nn = mkname(w->name, "dq");
    Onnx__NodeProto *n = emit_node(&e, "DequantizeLinear", in, zn ? 3 : 2, res, nn ? nn : "");
    free(nn);
    if (qt->axis >= 0) node_attr_int(&e, n, "axis", qt->axis);
    if (block) node_attr_int(&e, n, "block_size", qt->block_size);
    if (four) bump_ir(m, 10);
  } else {
    /* Cast(q) [- zp] * scale; block scales are expanded along the axis with Gather */
    char *qf = mkname(w->name, "qf"), *nn = mkname(w->name, "cast_q");
    const char *cin[1] = {qn};
    Onnx__NodeProto *n = emit_node(&e, "Cast", cin, 1, qf ? qf : "", nn ? nn : "");
    node_attr_int(&e, n, "to", MOPT_DT_FLOAT);
    free(nn);
    const char *scale_in = sn, *zp_in = zn;
    char *sfull = NULL, *zfull = NULL, *bi = NULL;
    if (block) {
      int64_t *idx = malloc((size_t)(dax ? dax : 1) * sizeof *idx);
      for (int64_t i = 0; idx && i < dax; i++) idx[i] = i / qt->block_size;
      bi = mkname(w->name, "block_idx");
      char *bin = bi ? xstrdup(bi) : NULL;
      emit_tensor(&e, bin, MOPT_DT_INT64, &dax, 1, idx, (size_t)dax * 8);
      sfull = mkname(w->name, "scale_full");
      nn = mkname(w->name, "gather_scale");
      const char *gin[2] = {sn, bi ? bi : ""};
      n = emit_node(&e, "Gather", gin, 2, sfull ? sfull : "", nn ? nn : "");
      node_attr_int(&e, n, "axis", qt->axis);
      free(nn);
      scale_in = sfull;
      if (zn) {
        zfull = mkname(w->name, "zp_full");
        nn = mkname(w->name, "gather_zp");
        const char *zin[2] = {zn, bi ? bi : ""};
        n = emit_node(&e, "Gather", zin, 2, zfull ? zfull : "", nn ? nn : "");
        node_attr_int(&e, n, "axis", qt->axis);
        free(nn);
        zp_in = zfull;
      }
    }
    const char *mul_a = qf;
    char *qz = NULL;
    if (zn) {
      qz = mkname(w->name, "qz");
      nn = mkname(w->name, "sub_zp");
      const char *sin[2] = {qf ? qf : "", zp_in ? zp_in : ""};
      emit_node(&e, "Sub", sin, 2, qz ? qz : "", nn ? nn : "");
      free(nn);
      mul_a = qz;
    }
    nn = mkname(w->name, "mul_scale");
    const char *min_[2] = {mul_a ? mul_a : "", scale_in ? scale_in : ""};
    emit_node(&e, "Mul", min_, 2, res, nn ? nn : "");
    free(nn);
    free(qf); free(qz); free(sfull); free(zfull); free(bi);
  }
  emit_final_cast(&e, w, tmp);
  qsource *qs = NULL;
  if (src) {
    qs = calloc(1, sizeof *qs);
    if (qs) {
      *qs = (qsource){.x = src, .qtype = qt->qtype, .store_t = store_t, .n = w->nelem};
      qs->l = (mopt_qlayout){qt->axis < 0 ? 0 : block ? 2 : 1,
                             mopt_view_make(w->dims, w->ndim, qt->axis), block ? qt->block_size : 0};
      qs->scales = malloc(qt->n_scales * sizeof *qs->scales);
      qs->zps = calloc(qt->n_scales, sizeof *qs->zps);
      if (qs->scales) memcpy(qs->scales, qt->scales, qt->n_scales * sizeof *qs->scales);
      if (qs->zps && qt->zero_points) memcpy(qs->zps, qt->zero_points, qt->n_scales * sizeof *qs->zps);
    }
    if (!qs || !qs->scales || !qs->zps) {
      qsource_free(qs);
      qs = NULL;
      e.oom = 1;                               /* emit_commit frees what was emitted */
    }
  }
  if ((rc = emit_commit(m, w, &e, MOPT_WENC_QUANT))) { qsource_free(qs); return rc; }
  if (!src) return 0;
  if (mopt_int_stream(m, qtensor, qlen, qsource_produce, qsource_free, qs) == 0) return 0;
  /* not streamed: compute the payload now */
  uint8_t *b = malloc(qlen ? qlen : 1);
  if (!b) { qsource_free(qs); return MOPT_ENOMEM; }
  qsource_produce(qs, 0, b, qlen);
  qsource_free(qs);
  free(qtensor->raw_data.data);
  qtensor->raw_data.data = b;
  qtensor->raw_data.len = qlen;
  return 0;
}

int mopt_weight_set_quantized(mopt_model *m, const mopt_weight *w, const mopt_qtensor *qt,
                              mopt_diag *diag) {
  return set_quantized(m, w, qt, NULL, diag);
}

int mopt_weight_set_quantized_from(mopt_model *m, const mopt_weight *w, const mopt_qtensor *qt,
                                   const void *x, mopt_diag *diag) {
  if (!x || x != mopt_weight_f32_mapped(m, w))
    return mopt_diag_set(diag, MOPT_EINVAL, w ? w->name : "",
                         "source values must be the weight's own mapped payload");
  return set_quantized(m, w, qt, x, diag);
}

/* ================================================================ LUT ==== */
int mopt_weight_set_lut(mopt_model *m, const mopt_weight *w, const mopt_lut *lut, mopt_diag *diag) {
  int rc = check_weight(m, w, diag);
  if (rc) return rc;
  if (!lut || lut->k < 2 || lut->k > 256 || !lut->idx || !lut->table)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "LUT needs 2..256 entries, indices and table");
  if (lut->axis < -1 || lut->axis >= w->ndim)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "axis %d out of range", (int)lut->axis);
  size_t ntab = lut->axis < 0 ? 1 : (size_t)w->dims[lut->axis];
  if (lut->n_tables != ntab)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "expected %zu tables, got %zu", ntab,
                         lut->n_tables);
  for (uint64_t i = 0; i < w->nelem; i++)
    if (lut->idx[i] >= lut->k)
      return mopt_diag_set(diag, MOPT_EINVAL, w->name, "index %llu = %u >= k = %d",
                           (unsigned long long)i, lut->idx[i], (int)lut->k);
  if ((uint64_t)ntab * (uint64_t)lut->k > INT32_MAX)
    return mopt_diag_set(diag, MOPT_ELIMIT, w->name, "table too large");
  if (lut->axis >= 0 && m->opset < 7)
    return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name,
                         "default opset %lld has no numpy-style Add (7) for per-channel tables",
                         (long long)m->opset);
  emit e = {0};
  char *tmp;
  const char *res = result_name(&e, w, &tmp);
  /* 4-bit packed indices where the opset has UINT4 (21) and they fit; ONNX Runtime 1.30 runs
   * Cast(UINT4 -> INT32) (checked by hand), older opsets get one byte per index */
  int four = m->opset >= 21 && lut->k <= 16;
  size_t ilen = four ? (w->nelem + 1) / 2 : w->nelem;
  uint8_t *ib = calloc(ilen ? ilen : 1, 1);
  for (uint64_t i = 0; ib && i < w->nelem; i++) {
    if (four) ib[i / 2] |= (uint8_t)(lut->idx[i] << (4 * (i & 1)));
    else ib[i] = lut->idx[i];
  }
  char *in_ = mkname(w->name, "idx");
  emit_tensor(&e, in_, four ? MOPT_DT_UINT4 : MOPT_DT_UINT8, w->dims, w->ndim, ib, ilen);
  if (four) bump_ir(m, 10);
  size_t tl = ntab * (size_t)lut->k;
  float *tb = malloc(tl * sizeof *tb);
  if (tb) memcpy(tb, lut->table, tl * sizeof *tb);
  char *tn = mkname(w->name, "table");
  int64_t tdim = (int64_t)tl;
  emit_tensor(&e, tn, MOPT_DT_FLOAT, &tdim, 1, tb, tl * 4);
  if (e.oom) { free(tmp); emit_free(&e); return MOPT_ENOMEM; }
  char *i32 = mkname(w->name, "idx32"), *nn = mkname(w->name, "cast_idx");
  const char *cin[1] = {in_ ? in_ : ""};
  Onnx__NodeProto *n = emit_node(&e, "Cast", cin, 1, i32 ? i32 : "", nn ? nn : "");
  node_attr_int(&e, n, "to", MOPT_DT_INT32);
  free(nn);
  const char *gidx = i32;
  char *on = NULL, *io = NULL;
  if (lut->axis >= 0) {
    int64_t odims[8];
    for (int i = 0; i < w->ndim; i++) odims[i] = i == lut->axis ? (int64_t)ntab : 1;
    int32_t *ob = malloc(ntab * sizeof *ob);
    for (size_t c = 0; ob && c < ntab; c++) ob[c] = (int32_t)(c * (size_t)lut->k);
    on = mkname(w->name, "offsets");
    emit_tensor(&e, on ? xstrdup(on) : NULL, MOPT_DT_INT32, odims, w->ndim, ob, ntab * 4);
    io = mkname(w->name, "idx_off");
    nn = mkname(w->name, "add_offsets");
    const char *ain[2] = {i32 ? i32 : "", on ? on : ""};
    emit_node(&e, "Add", ain, 2, io ? io : "", nn ? nn : "");
    free(nn);
    gidx = io;
  }
  nn = mkname(w->name, "gather_table");
  const char *gin[2] = {tn ? tn : "", gidx ? gidx : ""};
  n = emit_node(&e, "Gather", gin, 2, res, nn ? nn : "");
  node_attr_int(&e, n, "axis", 0);
  free(nn);
  free(i32); free(on); free(io);
  emit_final_cast(&e, w, tmp);
  return emit_commit(m, w, &e, MOPT_WENC_LUT);
}

/* ================================================================ low rank ==== */
/* Counts the uses of a value name in g and its subgraphs (node inputs, graph outputs). */
static size_t count_uses(const Onnx__GraphProto *g, const char *name) {
  size_t c = 0;
  for (size_t i = 0; i < g->n_output; i++)
    if (g->output[i]->name && strcmp(g->output[i]->name, name) == 0) c++;
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *n = g->node[i];
    for (size_t k = 0; k < n->n_input; k++)
      if (n->input[k] && strcmp(n->input[k], name) == 0) c++;
    for (size_t a = 0; a < n->n_attribute; a++) {
      if (n->attribute[a]->g) c += count_uses(n->attribute[a]->g, name);
      for (size_t k = 0; k < n->attribute[a]->n_graphs; k++)
        c += count_uses(n->attribute[a]->graphs[k], name);
    }
  }
  return c;
}

static float *transpose_f(const float *a, int64_t r, int64_t c) {
  int64_t rc_ = r * c;
  float *t = malloc((size_t)(rc_ > 0 ? rc_ : 1) * sizeof *t);
  if (!t) return NULL;
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < c; j++) t[j * r + i] = a[i * c + j];
  return t;
}

int mopt_weight_set_lowrank(mopt_model *m, const mopt_weight *w, int64_t rank, const float *a,
                            const float *b, mopt_diag *diag) {
  int rc = check_weight(m, w, diag);
  if (rc) return rc;
  if (w->ndim != 2 || !w->consumer_op || w->consumer_input != 1 ||
      (strcmp(w->consumer_op, "MatMul") != 0 && strcmp(w->consumer_op, "Gemm") != 0))
    return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name,
                         "low rank applies to 2-D weights consumed as MatMul/Gemm input B");
  /* consumed layout W[r][c]: c runs along the output channels */
  int stored_t = w->channel_axis == 0; /* stored as [c][r] (Gemm transB, or a Transpose) */
  int64_t R = stored_t ? w->dims[1] : w->dims[0], C = stored_t ? w->dims[0] : w->dims[1];
  if (rank < 1 || rank > (R < C ? R : C) || !a || !b)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name, "rank %lld out of range", (long long)rank);
  mopt_wrec *r = &m->wr[w->index];
  Onnx__NodeProto *cons = r->consumer;
  int rewrite = 0;
  size_t cpos = 0;
  if (cons && cons->n_input > 1 && cons->input[1] && strcmp(cons->input[1], w->name) == 0 &&
      count_uses(m->pb->graph, w->name) == 1) {
    while (cpos < r->graph->n_node && r->graph->node[cpos] != cons) cpos++;
    int gemm_ok = strcmp(w->consumer_op, "Gemm") != 0 ||
                  !mopt_int_node_attr(cons, "transA") || mopt_int_node_attr(cons, "transA")->i == 0;
    rewrite = cpos < r->graph->n_node && gemm_ok && w->loc == MOPT_LOC_INITIALIZER;
  }
  emit e = {0};
  size_t len;
  int64_t adims[2] = {R, rank}, bdims[2] = {rank, C};
  char *an = mkname(w->name, "lr_a"), *bn = mkname(w->name, "lr_b");
  if (rewrite) {
    /* X·W → (X·A)·B: A [R][rank] as is; B as the consumer reads it (transposed for transB) */
    void *ab = pack_float(a, (uint64_t)(R * rank), w->dtype, &len);
    emit_tensor(&e, an, w->dtype, adims, 2, ab, len);
    if (stored_t) {
      float *bt = transpose_f(b, rank, C);
      int64_t btd[2] = {C, rank};
      void *bb = bt ? pack_float(bt, (uint64_t)(rank * C), w->dtype, &len) : NULL;
      free(bt);
      emit_tensor(&e, bn, w->dtype, btd, 2, bb, len);
    } else {
      void *bb = pack_float(b, (uint64_t)(rank * C), w->dtype, &len);
      emit_tensor(&e, bn, w->dtype, bdims, 2, bb, len);
    }
    if (e.oom) { emit_free(&e); return MOPT_ENOMEM; }
    char *xa = mkname(w->name, "lr_xa"), *nn = mkname(w->name, "lr_matmul_xa");
    const char *in[2] = {cons->input[0] ? cons->input[0] : "", an ? an : ""};
    emit_node(&e, "MatMul", in, 2, xa ? xa : "", nn ? nn : "");
    free(nn);
    if (e.oom || !xa || !bn) { free(xa); emit_free(&e); return MOPT_ENOMEM; }
    /* commit by hand: initializers replace W, the MatMul goes right before the consumer */
    Onnx__GraphProto *g = r->graph;
    size_t pos = 0;
    while (pos < g->n_initializer && g->initializer[pos] != r->tensor) pos++;
    Onnx__TensorProto **inits = malloc((g->n_initializer + 1) * sizeof *inits);
    Onnx__NodeProto **nodes = malloc((g->n_node + 1) * sizeof *nodes);
    char *in0 = xstrdup(xa), *in1 = xstrdup(bn);
    if (pos == g->n_initializer || !inits || !nodes || !in0 || !in1) {
      free(inits); free(nodes); free(in0); free(in1); free(xa); emit_free(&e);
      return pos == g->n_initializer ? MOPT_EINTERNAL : MOPT_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < pos; i++) inits[k++] = g->initializer[i];
    inits[k++] = e.t[0];
    inits[k++] = e.t[1];
    for (size_t i = pos + 1; i < g->n_initializer; i++) inits[k++] = g->initializer[i];
    k = 0;
    for (size_t i = 0; i < cpos; i++) nodes[k++] = g->node[i];
    nodes[k++] = e.n[0];
    for (size_t i = cpos; i < g->n_node; i++) nodes[k++] = g->node[i];
    tensor_free(r->tensor);
    free(g->initializer);
    g->initializer = inits;
    g->n_initializer++;
    free(g->node);
    g->node = nodes;
    g->n_node++;
    for (size_t i = 0; i < g->n_input; i++)
      if (g->input[i]->name && strcmp(g->input[i]->name, w->name) == 0) {
        protobuf_c_message_free_unpacked(&g->input[i]->base, NULL);
        memmove(&g->input[i], &g->input[i + 1], (g->n_input - i - 1) * sizeof *g->input);
        g->n_input--;
        break;
      }
    free(cons->input[0]);
    free(cons->input[1]);
    cons->input[0] = in0;
    cons->input[1] = in1;
    free(xa);
    bump_ir(m, 4);
    r->tensor = NULL;
    r->enc = MOPT_WENC_LOWRANK;
    r->lr_rewrite = stored_t ? 2 : 1;
    return 0;
  }
  /* W = A·B as a MatMul feeding the consumer (constant-folded by runtimes), computed in
   * float32 (runtimes lack MatMul for some dtypes, e.g. bfloat16 on CPU) and cast back;
   * stored-transposed weights get W^T = B^T·A^T. */
  char *tmp;
  const char *res = result_name(&e, w, &tmp);
  if (stored_t) {
    float *bt = transpose_f(b, rank, C), *at = transpose_f(a, R, rank);
    int64_t btd[2] = {C, rank}, atd[2] = {rank, R};
    emit_tensor(&e, bn, MOPT_DT_FLOAT, btd, 2, bt, (size_t)(rank * C) * 4);
    emit_tensor(&e, an, MOPT_DT_FLOAT, atd, 2, at, (size_t)(R * rank) * 4);
    if (e.oom) { free(tmp); emit_free(&e); return MOPT_ENOMEM; }
    const char *in[2] = {bn ? bn : "", an ? an : ""};
    char *nn = mkname(w->name, "lr_matmul");
    emit_node(&e, "MatMul", in, 2, res, nn ? nn : "");
    free(nn);
  } else {
    float *ac = malloc((size_t)(R * rank) * 4), *bc = malloc((size_t)(rank * C) * 4);
    if (ac) memcpy(ac, a, (size_t)(R * rank) * 4);
    if (bc) memcpy(bc, b, (size_t)(rank * C) * 4);
    emit_tensor(&e, an, MOPT_DT_FLOAT, adims, 2, ac, (size_t)(R * rank) * 4);
    emit_tensor(&e, bn, MOPT_DT_FLOAT, bdims, 2, bc, (size_t)(rank * C) * 4);
    if (e.oom) { free(tmp); emit_free(&e); return MOPT_ENOMEM; }
    const char *in[2] = {an ? an : "", bn ? bn : ""};
    char *nn = mkname(w->name, "lr_matmul");
    emit_node(&e, "MatMul", in, 2, res, nn ? nn : "");
    free(nn);
  }
  emit_final_cast(&e, w, tmp);
  return emit_commit(m, w, &e, MOPT_WENC_LOWRANK);
}

/* ================================================================ prune ==== */
typedef struct ref_ctx { mopt_nameset refs; int err; } ref_ctx;

static void collect_refs(ref_ctx *c, const Onnx__GraphProto *g) {
  for (size_t i = 0; i < g->n_output && !c->err; i++)
    if (g->output[i]->name) c->err = mopt_nameset_add(&c->refs, g->output[i]->name);
  for (size_t i = 0; i < g->n_input && !c->err; i++)
    if (g->input[i]->name) c->err = mopt_nameset_add(&c->refs, g->input[i]->name);
  for (size_t i = 0; i < g->n_node && !c->err; i++) {
    const Onnx__NodeProto *n = g->node[i];
    for (size_t k = 0; k < n->n_input && !c->err; k++)
      if (n->input[k] && n->input[k][0]) c->err = mopt_nameset_add(&c->refs, n->input[k]);
    for (size_t a = 0; a < n->n_attribute; a++) {
      if (n->attribute[a]->g) collect_refs(c, n->attribute[a]->g);
      for (size_t k = 0; k < n->attribute[a]->n_graphs; k++) collect_refs(c, n->attribute[a]->graphs[k]);
    }
  }
}

static void forget_tensor(mopt_model *m, const Onnx__TensorProto *t, const Onnx__NodeProto *n) {
  for (size_t i = 0; i < m->nw; i++)
    if ((t && m->wr[i].tensor == t) || (n && m->wr[i].node == n)) {
      m->wr[i].tensor = NULL;
      m->wr[i].node = NULL;
      m->wr[i].enc = MOPT_WENC_REMOVED;
    }
}

static void prune_graph(mopt_model *m, const mopt_nameset *refs, Onnx__GraphProto *g) {
  size_t k = 0;
  for (size_t i = 0; i < g->n_initializer; i++) {
    Onnx__TensorProto *t = g->initializer[i];
    if (t->name && !mopt_nameset_has(refs, t->name)) { forget_tensor(m, t, NULL); tensor_free(t); }
    else g->initializer[k++] = t;
  }
  g->n_initializer = k;
  k = 0;
  for (size_t i = 0; i < g->n_node; i++) {
    Onnx__NodeProto *n = g->node[i];
    int dead = n->op_type && strcmp(n->op_type, "Constant") == 0 &&
               (!n->domain || !n->domain[0]) && n->n_output == 1 && n->output[0] &&
               !mopt_nameset_has(refs, n->output[0]);
    if (dead) {
      Onnx__AttributeProto *v = mopt_int_node_attr(n, "value");
      forget_tensor(m, v ? v->t : NULL, n);
      mopt_int_free_node(m, n);
      continue;
    }
    g->node[k++] = n;
    for (size_t a = 0; a < n->n_attribute; a++) {
      if (n->attribute[a]->g) prune_graph(m, refs, n->attribute[a]->g);
      for (size_t j = 0; j < n->attribute[a]->n_graphs; j++) prune_graph(m, refs, n->attribute[a]->graphs[j]);
    }
  }
  g->n_node = k;
}

int mopt_model_prune_unused(mopt_model *m) {
  if (!m) return MOPT_EINVAL;
  ref_ctx c = {0};
  int rc = mopt_nameset_init(&c.refs, NULL);
  if (rc) return rc;
  collect_refs(&c, m->pb->graph);
  if (!c.err) prune_graph(m, &c.refs, m->pb->graph);
  rc = c.err;
  mopt_nameset_free(&c.refs);
  return rc;
}

/* ================================================================ evaluator ==== */
typedef struct ev_val {
  int32_t dt;
  int nd;
  int64_t dims[8];
  int64_t n;
  float *d;
} ev_val;

typedef struct ev_ctx { const Onnx__GraphProto *g; mopt_diag *diag; const char *wname; } ev_ctx;

static int ev_fail(ev_ctx *c, const char *what) {
  return mopt_diag_set(c->diag, MOPT_EUNSUPPORTED, c->wname, "cannot evaluate rebuild: %s", what);
}

static int ev_from_tensor(ev_ctx *c, const Onnx__TensorProto *t, ev_val *v) {
  int64_t n = mopt_int_tensor_nelem(t);
  if (n < 0 || t->n_dims > 8) return ev_fail(c, "bad tensor");
  v->dt = t->data_type;
  v->nd = (int)t->n_dims;
  for (int i = 0; i < v->nd; i++) v->dims[i] = t->dims[i];
  v->n = n;
  v->d = malloc((size_t)(n ? n : 1) * sizeof(float));
  if (!v->d) return MOPT_ENOMEM;
  int rc = mopt_int_tensor_to_f32(t, v->d, (uint64_t)n, c->diag);
  if (rc) { free(v->d); v->d = NULL; }
  return rc;
}

static int ev_alloc(ev_val *v, int32_t dt, int nd, const int64_t *dims) {
  v->dt = dt;
  v->nd = nd;
  v->n = 1;
  for (int i = 0; i < nd; i++) { v->dims[i] = dims[i]; v->n *= dims[i]; }
  v->d = malloc((size_t)(v->n ? v->n : 1) * sizeof(float));
  return v->d ? 0 : MOPT_ENOMEM;
}

/* Broadcast binary op (numpy rules). op: '+', '-', '*'. */
static int ev_binary(ev_ctx *c, char op, const ev_val *a, const ev_val *b, ev_val *o) {
  int nd = a->nd > b->nd ? a->nd : b->nd;
  int64_t da[8], db[8], dout[8];
  for (int i = 0; i < nd; i++) {
    int ia = i - (nd - a->nd), ib = i - (nd - b->nd);
    da[i] = ia >= 0 ? a->dims[ia] : 1;
    db[i] = ib >= 0 ? b->dims[ib] : 1;
    if (da[i] != db[i] && da[i] != 1 && db[i] != 1) return ev_fail(c, "broadcast mismatch");
    dout[i] = da[i] == 1 ? db[i] : da[i];
  }
  int rc = ev_alloc(o, a->dt, nd, dout);
  if (rc) return rc;
  int64_t sa[8], sb[8], idx[8] = {0};
  int64_t accA = 1, accB = 1;
  for (int i = nd - 1; i >= 0; i--) {
    sa[i] = da[i] == 1 ? 0 : accA; accA *= da[i];
    sb[i] = db[i] == 1 ? 0 : accB; accB *= db[i];
  }
  for (int64_t k = 0; k < o->n; k++) {
    int64_t oa = 0, ob = 0;
    for (int i = 0; i < nd; i++) { oa += idx[i] * sa[i]; ob += idx[i] * sb[i]; }
    float x = a->d[oa], y = b->d[ob];
    o->d[k] = op == '+' ? x + y : op == '-' ? x - y : x * y;
    for (int i = nd - 1; i >= 0; i--) { if (++idx[i] < dout[i]) break; idx[i] = 0; }
  }
  if (a->dt == MOPT_DT_INT32 || a->dt == MOPT_DT_INT64)
    for (int64_t k = 0; k < o->n; k++) o->d[k] = truncf(o->d[k]);
  return 0;
}

static int ev_name(ev_ctx *c, const char *name, ev_val *v, int depth);

static int ev_node(ev_ctx *c, const Onnx__NodeProto *n, ev_val *v, int depth) {
  ev_val in[3];
  memset(in, 0, sizeof in);
  int nin = (int)(n->n_input < 3 ? n->n_input : 3), rc = 0;
  const char *op = n->op_type ? n->op_type : "";
  if (strcmp(op, "Constant") == 0) {
    Onnx__AttributeProto *a = mopt_int_node_attr(n, "value");
    return a && a->t ? ev_from_tensor(c, a->t, v) : ev_fail(c, "Constant without value");
  }
  for (int i = 0; i < nin && !rc; i++)
    if (n->input[i] && n->input[i][0]) rc = ev_name(c, n->input[i], &in[i], depth + 1);
  if (rc) goto out;
  if (strcmp(op, "Cast") == 0 || strcmp(op, "Identity") == 0) {
    *v = in[0];
    in[0].d = NULL;
    if (op[0] == 'C') {
      Onnx__AttributeProto *to = mopt_int_node_attr(n, "to");
      v->dt = to ? (int32_t)to->i : v->dt;
      for (int64_t k = 0; k < v->n; k++) {
        if (v->dt == MOPT_DT_FLOAT16) v->d[k] = mopt_f16_to_f32(mopt_f32_to_f16(v->d[k]));
        else if (v->dt == MOPT_DT_BFLOAT16) v->d[k] = mopt_bf16_to_f32(mopt_f32_to_bf16(v->d[k]));
        else if (v->dt != MOPT_DT_FLOAT && v->dt != MOPT_DT_DOUBLE) v->d[k] = truncf(v->d[k]);
      }
    }
  } else if (strcmp(op, "Add") == 0 || strcmp(op, "Sub") == 0 || strcmp(op, "Mul") == 0) {
    if (!in[0].d || !in[1].d) { rc = ev_fail(c, "binary op input"); goto out; }
    rc = ev_binary(c, op[0] == 'A' ? '+' : op[0] == 'S' ? '-' : '*', &in[0], &in[1], v);
  } else if (strcmp(op, "Gather") == 0) {
    Onnx__AttributeProto *ax = mopt_int_node_attr(n, "axis");
    int axis = ax ? (int)ax->i : 0;
    ev_val *d = &in[0], *ix = &in[1];
    if (axis < 0) axis += d->nd;
    if (!d->d || !ix->d || axis < 0 || axis >= d->nd || d->nd + ix->nd - 1 > 8) {
      rc = ev_fail(c, "Gather shape");
      goto out;
    }
    int64_t od[8], on = 0, outer = 1, inner = 1;
    for (int i = 0; i < axis; i++) { od[on++] = d->dims[i]; outer *= d->dims[i]; }
    for (int i = 0; i < ix->nd; i++) od[on++] = ix->dims[i];
    for (int i = axis + 1; i < d->nd; i++) { od[on++] = d->dims[i]; inner *= d->dims[i]; }
    if ((rc = ev_alloc(v, d->dt, (int)on, od))) goto out;
    int64_t D = d->dims[axis], k = 0;
    for (int64_t o = 0; o < outer; o++)
      for (int64_t j = 0; j < ix->n; j++) {
        int64_t t = (int64_t)ix->d[j];
        if (t < 0) t += D;
        if (t < 0 || t >= D) { rc = ev_fail(c, "Gather index out of range"); goto out; }
        memcpy(v->d + k, d->d + (o * D + t) * inner, (size_t)inner * sizeof(float));
        k += inner;
      }
  } else if (strcmp(op, "DequantizeLinear") == 0) {
    ev_val *x = &in[0], *s = &in[1], *z = &in[2];
    if (!x->d || !s->d) { rc = ev_fail(c, "DequantizeLinear inputs"); goto out; }
    Onnx__AttributeProto *ax = mopt_int_node_attr(n, "axis"), *bs = mopt_int_node_attr(n, "block_size");
    int axis = ax ? (int)ax->i : 1;
    int64_t block = bs ? bs->i : 0;
    if (axis < 0) axis += x->nd;
    if ((rc = ev_alloc(v, MOPT_DT_FLOAT, x->nd, x->dims))) goto out;
    int per_tensor = s->n == 1 && (s->nd == 0 || block == 0);
    int64_t inner = 1, D = axis >= 0 && axis < x->nd ? x->dims[axis] : 1;
    for (int i = axis + 1; i < x->nd; i++) inner *= x->dims[i];
    if (!per_tensor && (axis < 0 || axis >= x->nd)) { rc = ev_fail(c, "DequantizeLinear axis"); goto out; }
    for (int64_t k = 0; k < x->n; k++) {
      int64_t si = 0;
      if (!per_tensor) {
        int64_t o = k / (inner * D), a = (k / inner) % D, i = k % inner;
        if (block > 0) {
          int64_t nb = s->dims[axis];
          si = (o * nb + a / block) * inner + i;
        } else {
          si = a;
        }
      }
      if (si >= s->n) { rc = ev_fail(c, "DequantizeLinear scale index"); goto out; }
      float zp = z->d ? z->d[si] : 0.0f;
      v->d[k] = (x->d[k] - zp) * s->d[si];
    }
  } else if (strcmp(op, "Reshape") == 0) {
    ev_val *x = &in[0], *s = &in[1];
    if (!x->d || !s->d || s->n > 8) { rc = ev_fail(c, "Reshape inputs"); goto out; }
    int64_t nd[8], known = 1;
    int inf = -1;
    for (int i = 0; i < s->n; i++) {
      nd[i] = (int64_t)s->d[i];
      if (nd[i] == 0) nd[i] = i < x->nd ? x->dims[i] : 1;
      if (nd[i] == -1) inf = i; else known *= nd[i];
    }
    if (inf >= 0) nd[inf] = known ? x->n / known : 0;
    *v = *x;
    x->d = NULL;
    v->nd = (int)s->n;
    for (int i = 0; i < v->nd; i++) v->dims[i] = nd[i];
  } else if (strcmp(op, "MatMul") == 0) {
    ev_val *a = &in[0], *b = &in[1];
    if (!a->d || !b->d || a->nd != 2 || b->nd != 2 || a->dims[1] != b->dims[0]) {
      rc = ev_fail(c, "MatMul shapes");
      goto out;
    }
    int64_t od[2] = {a->dims[0], b->dims[1]}, K = a->dims[1];
    if ((rc = ev_alloc(v, a->dt, 2, od))) goto out;
    for (int64_t i = 0; i < od[0]; i++)
      for (int64_t j = 0; j < od[1]; j++) {
        double acc = 0;
        for (int64_t k = 0; k < K; k++) acc += (double)a->d[i * K + k] * b->d[k * od[1] + j];
        v->d[i * od[1] + j] = (float)acc;
      }
  } else {
    rc = ev_fail(c, op);
  }
out:
  for (int i = 0; i < 3; i++) free(in[i].d);
  return rc;
}

static int ev_name(ev_ctx *c, const char *name, ev_val *v, int depth) {
  memset(v, 0, sizeof *v);
  if (depth > 16) return ev_fail(c, "rebuild chain too deep");
  const Onnx__GraphProto *g = c->g;
  for (size_t i = 0; i < g->n_initializer; i++)
    if (g->initializer[i]->name && strcmp(g->initializer[i]->name, name) == 0)
      return ev_from_tensor(c, g->initializer[i], v);
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *n = g->node[i];
    if (n->n_output >= 1 && n->output[0] && strcmp(n->output[0], name) == 0)
      return ev_node(c, n, v, depth);
  }
  return ev_fail(c, name);
}

int mopt_int_eval_encoded(const mopt_model *m, const mopt_weight *w, float *out, mopt_diag *diag) {
  const mopt_wrec *r = &m->wr[w->index];
  if (m->nstreamed)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name,
                         "model holds streamed tensors: encoded weights cannot be read back");
  if (r->enc == MOPT_WENC_REMOVED)
    return mopt_diag_set(diag, MOPT_ENOTFOUND, w->name, "weight was removed as unused");
  ev_ctx c = {.g = r->graph, .diag = diag, .wname = w->name};
  ev_val v;
  int rc;
  if (r->enc == MOPT_WENC_LOWRANK && r->lr_rewrite) {
    /* W is no longer materialized: W = A·B (B stored transposed when lr_rewrite == 2) */
    char *an = mkname(w->name, "lr_a"), *bn = mkname(w->name, "lr_b");
    ev_val a, b;
    memset(&b, 0, sizeof b);
    rc = an && bn ? ev_name(&c, an, &a, 0) : MOPT_ENOMEM;
    if (!rc) {
      rc = ev_name(&c, bn, &b, 0);
      if (rc) free(a.d);
    }
    free(an);
    free(bn);
    if (rc) return rc;
    int64_t R = a.dims[0], K = a.dims[1], C = r->lr_rewrite == 2 ? b.dims[0] : b.dims[1];
    for (int64_t i = 0; i < R; i++)
      for (int64_t j = 0; j < C; j++) {
        double acc = 0;
        for (int64_t k = 0; k < K; k++)
          acc += (double)a.d[i * K + k] * (r->lr_rewrite == 2 ? b.d[j * K + k] : b.d[k * C + j]);
        /* stored layout: [R][C] normally, [C][R] when the consumer reads it transposed */
        if (r->lr_rewrite == 2) out[j * R + i] = (float)acc;
        else out[i * C + j] = (float)acc;
      }
    free(a.d);
    free(b.d);
    return 0;
  }
  rc = ev_name(&c, w->name, &v, 0);
  if (rc) return rc;
  if ((uint64_t)v.n != w->nelem) {
    free(v.d);
    return ev_fail(&c, "rebuilt element count differs");
  }
  memcpy(out, v.d, w->nelem * sizeof(float));
  free(v.d);
  return 0;
}

int mopt_int_eval_value(const Onnx__GraphProto *g, const char *name, float *out, uint64_t n,
                        mopt_diag *diag) {
  ev_ctx c = {.g = g, .diag = diag, .wname = name};
  ev_val v;
  int rc = ev_name(&c, name, &v, 0);
  if (rc) return rc;
  if ((uint64_t)v.n != n) {
    free(v.d);
    return ev_fail(&c, "rebuilt element count differs");
  }
  memcpy(out, v.d, n * sizeof(float));
  free(v.d);
  return 0;
}
