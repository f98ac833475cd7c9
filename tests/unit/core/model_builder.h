/* model_builder.h — builds small ONNX models in C for the core tests (header-only).
 *
 * Models are protobuf-c trees (everything malloc'd, freed by mb_free) packed with protobuf-c,
 * so the bytes the tests feed to mopt_model_load are real ONNX wire format. Strings given as
 * comma-separated lists ("X,W") become repeated name fields; "" entries stay empty names.
 * Trade-off: only what the tests need (initializers, Constant nodes, subgraphs, typed fields);
 * every helper aborts on allocation failure because a test cannot continue without memory.
 */
#ifndef MOPT_MODEL_BUILDER_H
#define MOPT_MODEL_BUILDER_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mopt.h"
#include "onnx.pb-c.h"

static inline void *mb_alloc(size_t n) {
  void *p = calloc(1, n ? n : 1);
  if (!p) { fprintf(stderr, "model_builder: out of memory\n"); abort(); }
  return p;
}
static inline char *mb_strdup(const char *s) {
  char *d = mb_alloc(strlen(s) + 1);
  strcpy(d, s);
  return d;
}
#define MB_PUSH(arr, n, v) do { \
    (arr) = realloc((arr), ((n) + 1) * sizeof *(arr)); \
    if (!(arr)) abort(); \
    (arr)[(n)++] = (v); \
  } while (0)

/* Splits "a,b,,c" into a malloc'd string array. */
static inline char **mb_split(const char *csv, size_t *n) {
  *n = 0;
  char **out = NULL;
  if (!csv || !*csv) return out;
  const char *p = csv;
  for (;;) {
    const char *q = strchr(p, ',');
    size_t len = q ? (size_t)(q - p) : strlen(p);
    char *s = mb_alloc(len + 1);
    memcpy(s, p, len);
    MB_PUSH(out, *n, s);
    if (!q) break;
    p = q + 1;
  }
  return out;
}

static inline Onnx__ModelProto *mb_model(int64_t opset, int64_t ir) {
  Onnx__ModelProto *m = mb_alloc(sizeof *m);
  onnx__model_proto__init(m);
  m->has_ir_version = 1;
  m->ir_version = ir;
  m->producer_name = mb_strdup("mopt-tests");
  Onnx__OperatorSetIdProto *o = mb_alloc(sizeof *o);
  onnx__operator_set_id_proto__init(o);
  o->domain = mb_strdup("");
  o->has_version = 1;
  o->version = opset;
  MB_PUSH(m->opset_import, m->n_opset_import, o);
  m->graph = mb_alloc(sizeof *m->graph);
  onnx__graph_proto__init(m->graph);
  m->graph->name = mb_strdup("g");
  return m;
}

static inline Onnx__GraphProto *mb_graph_new(const char *name) {
  Onnx__GraphProto *g = mb_alloc(sizeof *g);
  onnx__graph_proto__init(g);
  g->name = mb_strdup(name);
  return g;
}

static inline Onnx__ValueInfoProto *mb_vi(const char *name, int32_t elem, int nd, const int64_t *dims) {
  Onnx__ValueInfoProto *v = mb_alloc(sizeof *v);
  onnx__value_info_proto__init(v);
  v->name = mb_strdup(name);
  if (elem) {
    Onnx__TypeProto *t = mb_alloc(sizeof *t);
    onnx__type_proto__init(t);
    Onnx__TypeProto__Tensor *tt = mb_alloc(sizeof *tt);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = 1;
    tt->elem_type = elem;
    if (nd >= 0) {
      Onnx__TensorShapeProto *sh = mb_alloc(sizeof *sh);
      onnx__tensor_shape_proto__init(sh);
      for (int i = 0; i < nd; i++) {
        Onnx__TensorShapeProto__Dimension *d = mb_alloc(sizeof *d);
        onnx__tensor_shape_proto__dimension__init(d);
        d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
        d->dim_value = dims[i];
        MB_PUSH(sh->dim, sh->n_dim, d);
      }
      tt->shape = sh;
    }
    t->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    t->tensor_type = tt;
    v->type = t;
  }
  return v;
}

static inline void mb_input(Onnx__GraphProto *g, const char *name, int32_t elem, int nd,
                            const int64_t *dims) {
  MB_PUSH(g->input, g->n_input, mb_vi(name, elem, nd, dims));
}
static inline void mb_output(Onnx__GraphProto *g, const char *name, int32_t elem) {
  MB_PUSH(g->output, g->n_output, mb_vi(name, elem, -1, NULL));
}

/* Tensor with raw_data (bytes copied). */
static inline Onnx__TensorProto *mb_tensor_raw(const char *name, int32_t dt, int nd,
                                               const int64_t *dims, const void *bytes, size_t len) {
  Onnx__TensorProto *t = mb_alloc(sizeof *t);
  onnx__tensor_proto__init(t);
  t->name = mb_strdup(name);
  t->has_data_type = 1;
  t->data_type = dt;
  for (int i = 0; i < nd; i++) MB_PUSH(t->dims, t->n_dims, dims[i]);
  t->has_raw_data = 1;
  t->raw_data.data = mb_alloc(len);
  if (len) memcpy(t->raw_data.data, bytes, len);
  t->raw_data.len = len;
  return t;
}

/* Float32 tensor with raw_data. */
static inline Onnx__TensorProto *mb_tensor_f32(const char *name, int nd, const int64_t *dims,
                                               const float *v) {
  size_t n = 1;
  for (int i = 0; i < nd; i++) n *= (size_t)dims[i];
  return mb_tensor_raw(name, MOPT_DT_FLOAT, nd, dims, v, n * 4);
}

/* Deterministic float32 values: sin-based, distinct, in (-1, 1). */
static inline float *mb_values(size_t n, unsigned seed) {
  float *v = mb_alloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = (float)(0.9 * __builtin_sin((double)(i * 7 + seed * 13 + 1) * 0.731));
  return v;
}

static inline Onnx__TensorProto *mb_tensor_seq(const char *name, int nd, const int64_t *dims,
                                               unsigned seed) {
  size_t n = 1;
  for (int i = 0; i < nd; i++) n *= (size_t)dims[i];
  float *v = mb_values(n, seed);
  Onnx__TensorProto *t = mb_tensor_f32(name, nd, dims, v);
  free(v);
  return t;
}

static inline Onnx__TensorProto *mb_tensor_i64(const char *name, int nd, const int64_t *dims,
                                               const int64_t *v) {
  size_t n = 1;
  for (int i = 0; i < nd; i++) n *= (size_t)dims[i];
  return mb_tensor_raw(name, MOPT_DT_INT64, nd, dims, v, n * 8);
}

static inline void mb_init(Onnx__GraphProto *g, Onnx__TensorProto *t) {
  MB_PUSH(g->initializer, g->n_initializer, t);
}

static inline Onnx__NodeProto *mb_node(Onnx__GraphProto *g, const char *op, const char *inputs,
                                       const char *outputs, const char *name) {
  Onnx__NodeProto *n = mb_alloc(sizeof *n);
  onnx__node_proto__init(n);
  n->op_type = mb_strdup(op);
  if (name) n->name = mb_strdup(name);
  n->input = mb_split(inputs, &n->n_input);
  n->output = mb_split(outputs, &n->n_output);
  MB_PUSH(g->node, g->n_node, n);
  return n;
}

static inline Onnx__AttributeProto *mb_attr(Onnx__NodeProto *n, const char *name,
                                            Onnx__AttributeProto__AttributeType type) {
  Onnx__AttributeProto *a = mb_alloc(sizeof *a);
  onnx__attribute_proto__init(a);
  a->name = mb_strdup(name);
  a->has_type = 1;
  a->type = type;
  MB_PUSH(n->attribute, n->n_attribute, a);
  return a;
}
static inline void mb_attr_i(Onnx__NodeProto *n, const char *name, int64_t v) {
  Onnx__AttributeProto *a = mb_attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
  a->has_i = 1;
  a->i = v;
}
static inline void mb_attr_ints(Onnx__NodeProto *n, const char *name, size_t k, const int64_t *v) {
  Onnx__AttributeProto *a = mb_attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
  for (size_t i = 0; i < k; i++) MB_PUSH(a->ints, a->n_ints, v[i]);
}
static inline void mb_attr_t(Onnx__NodeProto *n, const char *name, Onnx__TensorProto *t) {
  Onnx__AttributeProto *a = mb_attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
  a->t = t;
}
static inline void mb_attr_g(Onnx__NodeProto *n, const char *name, Onnx__GraphProto *g) {
  Onnx__AttributeProto *a = mb_attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH);
  a->g = g;
}
/* Constant node producing out from tensor t. */
static inline Onnx__NodeProto *mb_constant(Onnx__GraphProto *g, const char *out, Onnx__TensorProto *t) {
  Onnx__NodeProto *n = mb_node(g, "Constant", "", out, NULL);
  mb_attr_t(n, "value", t);
  return n;
}

static inline uint8_t *mb_pack(const Onnx__ModelProto *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(&m->base);
  uint8_t *b = mb_alloc(*len);
  protobuf_c_message_pack(&m->base, b);
  return b;
}
static inline void mb_free(Onnx__ModelProto *m) {
  protobuf_c_message_free_unpacked(&m->base, NULL);
}
/* Packs, frees the tree, loads; returns the load result code. */
static inline int mb_load(Onnx__ModelProto *pm, mopt_model **out, mopt_diag *d) {
  size_t len;
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  int rc = mopt_model_load(b, len, NULL, out, d);
  free(b);
  return rc;
}

/* The common MLP used by several tests: X[2,16] → MatMul W1[16,32] → Gemm(W2[8,32], b2,
 * transB=1) → Y. */
static inline Onnx__ModelProto *mb_mlp(int64_t opset) {
  int64_t ir = opset >= 21 ? 10 : opset >= 17 ? 8 : opset >= 13 ? 7 : opset >= 11 ? 6 : 4;
  Onnx__ModelProto *m = mb_model(opset, ir);
  Onnx__GraphProto *g = m->graph;
  int64_t xd[2] = {2, 16}, w1[2] = {16, 32}, w2[2] = {8, 32}, b2[1] = {8};
  mb_input(g, "X", MOPT_DT_FLOAT, 2, xd);
  mb_init(g, mb_tensor_seq("W1", 2, w1, 1));
  mb_init(g, mb_tensor_seq("W2", 2, w2, 2));
  mb_init(g, mb_tensor_seq("b2", 1, b2, 3));
  mb_node(g, "MatMul", "X,W1", "h", "mm");
  Onnx__NodeProto *gm = mb_node(g, "Gemm", "h,W2,b2", "Y", "gemm");
  mb_attr_i(gm, "transB", 1);
  mb_output(g, "Y", MOPT_DT_FLOAT);
  return m;
}

#endif
