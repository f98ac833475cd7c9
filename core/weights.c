/* weights.c — find every weight tensor of a model, its consumer and axes, and decode it.
 *
 * Weights are the tensors of graph.initializer and of Constant nodes' "value" attribute, in the
 * main graph and in every subgraph (If/Loop/Scan bodies, recursively). The consumer of a weight
 * is found by following its value name through layout-only ops (Transpose, Reshape, Identity,
 * Cast, Squeeze, Unsqueeze) while tracking which original axis each current axis came from, so
 * channel and reduction axes are reported in the tensor's own layout.
 * Trade-off: the list is built once (first call) and kept stable, so pointers handed out stay
 * valid while encoders rewrite the graph; the consumer search uses one name→uses hash index
 * over all graphs (names are matched globally, ignoring shadowing, which ONNX forbids anyway).
 */
#include "model_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libmopt reads raw_data in place and assumes a little-endian host"
#endif

/* ================================================================ tensor helpers ==== */
int64_t mopt_int_tensor_nelem(const Onnx__TensorProto *t) {
  int64_t n = 1;
  for (size_t i = 0; i < t->n_dims; i++) {
    if (t->dims[i] < 0 || __builtin_mul_overflow(n, t->dims[i], &n)) return -1;
  }
  return n;
}

Onnx__AttributeProto *mopt_int_node_attr(const Onnx__NodeProto *n, const char *name) {
  for (size_t i = 0; i < n->n_attribute; i++)
    if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0) return n->attribute[i];
  return NULL;
}

static int64_t attr_int(const Onnx__NodeProto *n, const char *name, int64_t dflt) {
  Onnx__AttributeProto *a = mopt_int_node_attr(n, name);
  return a && a->has_i ? a->i : dflt;
}

/* One element of raw little-endian data as double; *ok = 0 for unsupported dtypes. */
static double raw_elem(const uint8_t *p, int32_t dt, uint64_t i, int *ok) {
  switch (dt) {
  case MOPT_DT_FLOAT: { float v; memcpy(&v, p + 4 * i, 4); return v; }
  case MOPT_DT_DOUBLE: { double v; memcpy(&v, p + 8 * i, 8); return v; }
  case MOPT_DT_FLOAT16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return mopt_f16_to_f32(v); }
  case MOPT_DT_BFLOAT16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return mopt_bf16_to_f32(v); }
  case MOPT_DT_INT8: return (int8_t)p[i];
  case MOPT_DT_UINT8: case MOPT_DT_BOOL: return p[i];
  case MOPT_DT_INT16: { int16_t v; memcpy(&v, p + 2 * i, 2); return v; }
  case MOPT_DT_UINT16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
  case MOPT_DT_INT32: { int32_t v; memcpy(&v, p + 4 * i, 4); return v; }
  case MOPT_DT_UINT32: { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
  case MOPT_DT_INT64: { int64_t v; memcpy(&v, p + 8 * i, 8); return (double)v; }
  case MOPT_DT_UINT64: { uint64_t v; memcpy(&v, p + 8 * i, 8); return (double)v; }
  case MOPT_DT_UINT4: return (p[i / 2] >> (4 * (i & 1))) & 15;
  case MOPT_DT_INT4: { int v = (p[i / 2] >> (4 * (i & 1))) & 15; return v >= 8 ? v - 16 : v; }
  default: *ok = 0; return 0;
  }
}

/* One element from the typed fields as double. */
static double typed_elem(const Onnx__TensorProto *t, int32_t dt, uint64_t i, int *ok) {
  switch (dt) {
  case MOPT_DT_FLOAT: return t->float_data[i];
  case MOPT_DT_DOUBLE: return t->double_data[i];
  case MOPT_DT_INT64: return (double)t->int64_data[i];
  case MOPT_DT_UINT32: case MOPT_DT_UINT64: return (double)t->uint64_data[i];
  case MOPT_DT_FLOAT16: return mopt_f16_to_f32((uint16_t)t->int32_data[i]);
  case MOPT_DT_BFLOAT16: return mopt_bf16_to_f32((uint16_t)t->int32_data[i]);
  case MOPT_DT_INT8: return (int8_t)t->int32_data[i];
  case MOPT_DT_UINT8: return (uint8_t)t->int32_data[i];
  case MOPT_DT_INT16: return (int16_t)t->int32_data[i];
  case MOPT_DT_UINT16: return (uint16_t)t->int32_data[i];
  case MOPT_DT_INT32: return t->int32_data[i];
  case MOPT_DT_BOOL: return t->int32_data[i] != 0;
  case MOPT_DT_UINT4: return (t->int32_data[i / 2] >> (4 * (i & 1))) & 15;
  case MOPT_DT_INT4: {
    int v = (t->int32_data[i / 2] >> (4 * (i & 1))) & 15;
    return v >= 8 ? v - 16 : v;
  }
  default: *ok = 0; return 0;
  }
}

/* Checks that the tensor holds n elements in a form we decode; returns the source kind:
 * 1 raw_data, 2 typed fields, 0 empty (n == 0), negative error. */
static int tensor_source(const Onnx__TensorProto *t, uint64_t n, mopt_diag *diag) {
  const char *name = t->name ? t->name : "";
  int64_t tn = mopt_int_tensor_nelem(t);
  if (tn < 0 || (uint64_t)tn != n)
    return mopt_diag_set(diag, MOPT_EINVAL, name, "tensor has %lld elements, caller expects %llu",
                         (long long)tn, (unsigned long long)n);
  int32_t dt = t->data_type;
  int bits = mopt_dtype_bits(dt);
  if (n == 0) return 0;
  if (t->has_raw_data) {
    uint64_t need = bits == 4 ? (n + 1) / 2 : n * (uint64_t)(bits / 8);
    if (bits == 0 || t->raw_data.len != need)
      return mopt_diag_set(diag, MOPT_EMODEL, name, "raw_data holds %zu bytes, expected %llu",
                           t->raw_data.len, (unsigned long long)need);
    return 1;
  }
  size_t have;
  switch (dt) {
  case MOPT_DT_FLOAT: have = t->n_float_data; break;
  case MOPT_DT_DOUBLE: have = t->n_double_data; break;
  case MOPT_DT_INT64: have = t->n_int64_data; break;
  case MOPT_DT_UINT32: case MOPT_DT_UINT64: have = t->n_uint64_data; break;
  case MOPT_DT_INT4: case MOPT_DT_UINT4: have = t->n_int32_data * 2; break;
  default: have = t->n_int32_data; break;
  }
  if (have < n)
    return mopt_diag_set(diag, MOPT_EMODEL, name, "typed data holds %zu values, expected %llu",
                         have, (unsigned long long)n);
  return 2;
}

int mopt_int_tensor_to_f32(const Onnx__TensorProto *t, float *out, uint64_t n, mopt_diag *diag) {
  int src = tensor_source(t, n, diag);
  if (src <= 0) return src;
  int32_t dt = t->data_type, ok = 1;
  if (src == 1 && dt == MOPT_DT_FLOAT) { memcpy(out, t->raw_data.data, n * 4); return 0; }
  if (src == 2 && dt == MOPT_DT_FLOAT) { memcpy(out, t->float_data, n * 4); return 0; }
  if (src == 1 && dt == MOPT_DT_FLOAT16) {
    const uint8_t *p = t->raw_data.data;
    for (uint64_t i = 0; i < n; i++) {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2);
      out[i] = mopt_f16_to_f32(h);
    }
    return 0;
  }
  for (uint64_t i = 0; i < n && ok; i++)
    out[i] = (float)(src == 1 ? raw_elem(t->raw_data.data, dt, i, &ok) : typed_elem(t, dt, i, &ok));
  if (!ok)
    return mopt_diag_set(diag, MOPT_EUNSUPPORTED, t->name ? t->name : "",
                         "cannot decode %s tensors to float32", mopt_dtype_name(dt));
  return 0;
}

int mopt_int_tensor_to_i64(const Onnx__TensorProto *t, int64_t *out, uint64_t n, mopt_diag *diag) {
  int src = tensor_source(t, n, diag);
  if (src <= 0) return src;
  int32_t dt = t->data_type;
  int ok = 1;
  if (dt == MOPT_DT_INT64) {
    if (src == 1) memcpy(out, t->raw_data.data, n * 8);
    else memcpy(out, t->int64_data, n * 8);
    return 0;
  }
  if (dt == MOPT_DT_FLOAT || dt == MOPT_DT_DOUBLE || dt == MOPT_DT_FLOAT16 ||
      dt == MOPT_DT_BFLOAT16 || dt == MOPT_DT_UINT64)
    ok = 0;
  for (uint64_t i = 0; i < n && ok; i++)
    out[i] = (int64_t)(src == 1 ? raw_elem(t->raw_data.data, dt, i, &ok) : typed_elem(t, dt, i, &ok));
  if (!ok)
    return mopt_diag_set(diag, MOPT_EUNSUPPORTED, t->name ? t->name : "",
                         "cannot decode %s tensors as integers", mopt_dtype_name(dt));
  return 0;
}

/* ================================================================ use index ==== */
typedef struct use { const Onnx__NodeProto *node; int32_t input; int32_t next; } use;
typedef struct use_index {
  const char **keys;       /* open addressing: name → head into uses */
  int32_t *heads;
  const Onnx__TensorProto **consts; /* constant tensor producing the name (initializer/Constant) */
  size_t cap;
  use *uses;
  size_t nuses, capuses;
  int oom;
} use_index;

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

static size_t ui_slot(use_index *ix, const char *name, int create) {
  if (create && ix->cap == 0) return SIZE_MAX;
  size_t mask = ix->cap - 1;
  for (size_t i = hash_str(name) & mask;; i = (i + 1) & mask) {
    if (!ix->keys[i]) {
      if (!create) return SIZE_MAX;
      ix->keys[i] = name;
      ix->heads[i] = -1;
      return i;
    }
    if (strcmp(ix->keys[i], name) == 0) return i;
  }
}

static void ui_count(const Onnx__GraphProto *g, size_t *names) {
  *names += g->n_initializer;
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *n = g->node[i];
    *names += n->n_input + n->n_output;
    for (size_t a = 0; a < n->n_attribute; a++) {
      if (n->attribute[a]->g) ui_count(n->attribute[a]->g, names);
      for (size_t k = 0; k < n->attribute[a]->n_graphs; k++) ui_count(n->attribute[a]->graphs[k], names);
    }
  }
}

static int is_default_domain(const Onnx__NodeProto *n) {
  return !n->domain || !n->domain[0] || strcmp(n->domain, "ai.onnx") == 0;
}

static int is_op(const Onnx__NodeProto *n, const char *op) {
  return n->op_type && strcmp(n->op_type, op) == 0 && is_default_domain(n);
}

static void ui_fill(use_index *ix, const Onnx__GraphProto *g) {
  for (size_t i = 0; i < g->n_initializer; i++) {
    const Onnx__TensorProto *t = g->initializer[i];
    if (!t->name) continue;
    size_t s = ui_slot(ix, t->name, 1);
    ix->consts[s] = t;
  }
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *n = g->node[i];
    if (is_op(n, "Constant") && n->n_output > 0 && n->output[0]) {
      Onnx__AttributeProto *v = mopt_int_node_attr(n, "value");
      if (v && v->t) ix->consts[ui_slot(ix, n->output[0], 1)] = v->t;
    }
    for (size_t k = 0; k < n->n_input; k++) {
      if (!n->input[k] || !n->input[k][0]) continue;
      if (ix->nuses == ix->capuses) {
        size_t nc = ix->capuses ? ix->capuses * 2 : 256;
        use *nu = realloc(ix->uses, nc * sizeof *nu);
        if (!nu) { ix->oom = 1; return; }
        ix->uses = nu;
        ix->capuses = nc;
      }
      size_t s = ui_slot(ix, n->input[k], 1);
      /* append at the tail so uses keep node order */
      use u = {n, (int32_t)k, -1};
      int32_t id = (int32_t)ix->nuses;
      ix->uses[ix->nuses++] = u;
      if (ix->heads[s] < 0) ix->heads[s] = id;
      else {
        int32_t j = ix->heads[s];
        while (ix->uses[j].next >= 0) j = ix->uses[j].next;
        ix->uses[j].next = id;
      }
    }
    for (size_t a = 0; a < n->n_attribute; a++) {
      if (n->attribute[a]->g) ui_fill(ix, n->attribute[a]->g);
      for (size_t k = 0; k < n->attribute[a]->n_graphs; k++) ui_fill(ix, n->attribute[a]->graphs[k]);
    }
  }
}

static int ui_build(use_index *ix, const Onnx__GraphProto *g) {
  memset(ix, 0, sizeof *ix);
  size_t names = 0;
  ui_count(g, &names);
  size_t cap = 64;
  while (cap < names * 2 + 16) cap *= 2;
  ix->cap = cap;
  ix->keys = calloc(cap, sizeof *ix->keys);
  ix->heads = calloc(cap, sizeof *ix->heads);
  ix->consts = calloc(cap, sizeof *ix->consts);
  if (!ix->keys || !ix->heads || !ix->consts) return MOPT_ENOMEM;
  ui_fill(ix, g);
  return ix->oom ? MOPT_ENOMEM : 0;
}

static void ui_free(use_index *ix) {
  free(ix->keys);
  free(ix->heads);
  free(ix->consts);
  free(ix->uses);
}

/* Tail-appended use chains are walked from the head; a "last" pointer would be faster but the
 * chains are short (a value has few consumers). */

/* ================================================================ consumer search ==== */
typedef struct vstate {
  const char *name;
  int nd;                /* -1 = rank unknown */
  int64_t dims[8];
  int orig[8];           /* original axis of each current axis, -1 if none */
} vstate;

/* Constant int64 values of a value name (shape/axes inputs); returns count or -1. */
static int const_ints(use_index *ix, const char *name, int64_t *out, int cap) {
  if (!name || !name[0]) return -1;
  size_t s = ui_slot(ix, name, 0);
  if (s == SIZE_MAX || !ix->consts[s]) return -1;
  const Onnx__TensorProto *t = ix->consts[s];
  int64_t n = mopt_int_tensor_nelem(t);
  if (n < 0 || n > cap) return -1;
  if (mopt_int_tensor_to_i64(t, out, (uint64_t)n, NULL)) return -1;
  return (int)n;
}

static int axes_of(use_index *ix, const Onnx__NodeProto *n, int64_t *ax, int cap) {
  Onnx__AttributeProto *a = mopt_int_node_attr(n, "axes");
  if (a && a->n_ints) {
    if (a->n_ints > (size_t)cap) return -1;
    for (size_t i = 0; i < a->n_ints; i++) ax[i] = a->ints[i];
    return (int)a->n_ints;
  }
  if (n->n_input > 1) return const_ints(ix, n->input[1], ax, cap);
  return 0; /* no axes */
}

/* Maps a state through a layout op. Returns 1 if followed (out filled), 0 if not a layout op. */
static int pass_through(use_index *ix, const Onnx__NodeProto *n, int input, const vstate *in,
                        vstate *out) {
  if (input != 0 || n->n_output < 1 || !n->output[0] || !n->output[0][0]) return 0;
  *out = *in;
  out->name = n->output[0];
  if (is_op(n, "Identity") || is_op(n, "Cast")) return 1;
  if (in->nd < 0) {
    if (is_op(n, "Transpose") || is_op(n, "Reshape") || is_op(n, "Squeeze") ||
        is_op(n, "Unsqueeze")) return 1;
    return 0;
  }
  if (is_op(n, "Transpose")) {
    Onnx__AttributeProto *p = mopt_int_node_attr(n, "perm");
    int nd = in->nd;
    int perm[8];
    if (p && p->n_ints) {
      if ((int)p->n_ints != nd) { out->nd = -1; return 1; }
      for (int i = 0; i < nd; i++) {
        if (p->ints[i] < 0 || p->ints[i] >= nd) { out->nd = -1; return 1; }
        perm[i] = (int)p->ints[i];
      }
    } else {
      for (int i = 0; i < nd; i++) perm[i] = nd - 1 - i;
    }
    for (int i = 0; i < nd; i++) { out->dims[i] = in->dims[perm[i]]; out->orig[i] = in->orig[perm[i]]; }
    return 1;
  }
  int64_t nd2 = -1, dims2[8];
  if (is_op(n, "Reshape")) {
    int64_t shp[8];
    int k = n->n_input > 1 ? const_ints(ix, n->input[1], shp, 8) : -1;
    if (k < 0) { out->nd = -1; return 1; }
    int allowzero = (int)attr_int(n, "allowzero", 0);
    int64_t known = 1, total = 1;
    int infer = -1;
    for (int i = 0; i < in->nd; i++)
      if (__builtin_mul_overflow(total, in->dims[i], &total)) { out->nd = -1; return 1; }
    for (int i = 0; i < k; i++) {
      if (shp[i] == 0 && !allowzero) shp[i] = i < in->nd ? in->dims[i] : -2;
      if (shp[i] == -1 && infer < 0) infer = i;
      else if (shp[i] < 0 || __builtin_mul_overflow(known, shp[i], &known)) {
        out->nd = -1; /* malformed or unknowable shape: stop tracking axes */
        return 1;
      }
    }
    if (infer >= 0) shp[infer] = known ? total / known : 0;
    if (infer >= 0 ? (known == 0 || total % known != 0) : known != total) { out->nd = -1; return 1; }
    nd2 = k;
    memcpy(dims2, shp, sizeof(int64_t) * (size_t)k);
  } else if (is_op(n, "Squeeze")) {
    int64_t ax[8];
    int k = axes_of(ix, n, ax, 8);
    if (k < 0) { out->nd = -1; return 1; }
    nd2 = 0;
    for (int i = 0; i < in->nd; i++) {
      int drop = 0;
      if (k == 0) drop = in->dims[i] == 1;
      for (int j = 0; j < k; j++) if ((ax[j] < 0 ? ax[j] + in->nd : ax[j]) == i) drop = 1;
      if (!drop) dims2[nd2++] = in->dims[i];
    }
  } else if (is_op(n, "Unsqueeze")) {
    int64_t ax[8];
    int k = axes_of(ix, n, ax, 8);
    if (k <= 0 || in->nd + k > 8) { out->nd = -1; return 1; }
    nd2 = in->nd + k;
    int src = 0;
    for (int i = 0; i < nd2; i++) {
      int ins = 0;
      for (int j = 0; j < k; j++) if ((ax[j] < 0 ? ax[j] + nd2 : ax[j]) == i) ins = 1;
      dims2[i] = ins ? 1 : (src < in->nd ? in->dims[src++] : 1);
    }
  } else {
    return 0;
  }
  /* Axis mapping for reshape-like ops: only when the non-1 dims are the same sequence. */
  int a = 0, b = 0, same = 1;
  int orig2[8];
  for (int i = 0; i < nd2; i++) orig2[i] = -1;
  while (1) {
    while (a < in->nd && in->dims[a] == 1) a++;
    while (b < nd2 && dims2[b] == 1) b++;
    if (a >= in->nd || b >= nd2) { same = a >= in->nd && b >= nd2; break; }
    if (in->dims[a] != dims2[b]) { same = 0; break; }
    orig2[b] = in->orig[a];
    a++;
    b++;
  }
  out->nd = (int)nd2;
  for (int i = 0; i < nd2; i++) { out->dims[i] = dims2[i]; out->orig[i] = same ? orig2[i] : -1; }
  return 1;
}

/* Consumer axes in the current layout; returns 1 for a weight consumer, 0 for a terminal
 * non-weight use (bias inputs and every other op). */
static int consumer_axes(const Onnx__NodeProto *n, int idx, int nd, int *ch, int *red) {
  *ch = *red = -1;
  if (is_op(n, "MatMul")) {
    if (idx > 1) return 0;
    if (nd == 1) { *red = 0; return 1; }
    if (nd < 0) return 1;
    if (idx == 1) { *ch = nd - 1; *red = nd - 2; } else { *ch = nd - 2; *red = nd - 1; }
    return 1;
  }
  if (is_op(n, "Gemm")) {
    if (idx == 1) {
      int tb = attr_int(n, "transB", 0) != 0;
      *ch = tb ? 0 : 1; *red = tb ? 1 : 0;
      return 1;
    }
    if (idx == 0) {
      int ta = attr_int(n, "transA", 0) != 0;
      *ch = ta ? 1 : 0; *red = ta ? 0 : 1;
      return 1;
    }
    return 0;
  }
  if (is_op(n, "Conv")) { if (idx != 1) return 0; *ch = 0; *red = 1; return 1; }
  if (is_op(n, "ConvTranspose")) { if (idx != 1) return 0; *ch = 1; *red = 0; return 1; }
  if (is_op(n, "LSTM") || is_op(n, "GRU") || is_op(n, "RNN")) {
    if (idx != 1 && idx != 2) return 0;
    *ch = 1; *red = 2;
    return 1;
  }
  if (is_op(n, "Gather")) {
    if (idx != 0) return 0;
    int64_t ax = attr_int(n, "axis", 0);
    if (nd > 0 && ax < 0) ax += nd;
    *ch = (int)ax;
    return 1;
  }
  return 0;
}

static int is_float_dtype(int32_t dt) {
  return dt == MOPT_DT_FLOAT || dt == MOPT_DT_FLOAT16 || dt == MOPT_DT_BFLOAT16 ||
         dt == MOPT_DT_DOUBLE;
}

static void find_consumer(use_index *ix, mopt_weight *w, mopt_wrec *r) {
  vstate queue[32];
  int head = 0, tail = 0;
  vstate s0 = {.name = w->name, .nd = w->ndim};
  for (int i = 0; i < w->ndim; i++) { s0.dims[i] = w->dims[i]; s0.orig[i] = i; }
  queue[tail++] = s0;
  while (head < tail) {
    vstate st = queue[head++];
    size_t slot = ui_slot(ix, st.name, 0);
    if (slot == SIZE_MAX) continue;
    for (int32_t u = ix->heads[slot]; u >= 0; u = ix->uses[u].next) {
      const Onnx__NodeProto *n = ix->uses[u].node;
      int ch, red;
      if (consumer_axes(n, ix->uses[u].input, st.nd, &ch, &red)) {
        w->consumer_op = n->op_type;
        w->consumer_input = ix->uses[u].input;
        w->channel_axis = ch >= 0 && ch < st.nd ? st.orig[ch] : -1;
        w->reduction_axis = red >= 0 && red < st.nd ? st.orig[red] : -1;
        w->is_weight = is_float_dtype(w->dtype);
        r->consumer = (Onnx__NodeProto *)n;
        return;
      }
      vstate nx;
      if (tail < 32 && pass_through(ix, n, ix->uses[u].input, &st, &nx)) queue[tail++] = nx;
    }
  }
}

/* ================================================================ listing ==== */
typedef struct list_ctx { mopt_model *m; size_t cap; int err; } list_ctx;

static void list_add(list_ctx *c, Onnx__GraphProto *g, const char *path, Onnx__TensorProto *t,
                     Onnx__NodeProto *node, const char *name) {
  mopt_model *m = c->m;
  if (c->err) return;
  if (m->nw == c->cap) {
    size_t nc = c->cap ? c->cap * 2 : 64;
    mopt_weight *nw = realloc(m->w, nc * sizeof *nw);
    if (!nw) { c->err = MOPT_ENOMEM; return; }
    m->w = nw;
    mopt_wrec *nr = realloc(m->wr, nc * sizeof *nr);
    if (!nr) { c->err = MOPT_ENOMEM; return; }
    m->wr = nr;
    c->cap = nc;
  }
  mopt_weight *w = &m->w[m->nw];
  mopt_wrec *r = &m->wr[m->nw];
  memset(w, 0, sizeof *w);
  memset(r, 0, sizeof *r);
  w->name = mopt_int_own(m, strdup(name ? name : ""));
  w->graph_path = path;
  if (!w->name) { c->err = MOPT_ENOMEM; return; }
  w->loc = node ? MOPT_LOC_CONSTANT : MOPT_LOC_INITIALIZER;
  w->dtype = t->data_type;
  w->ndim = (int32_t)(t->n_dims > 8 ? 8 : t->n_dims);
  for (int i = 0; i < w->ndim; i++) w->dims[i] = t->dims[i];
  int64_t ne = mopt_int_tensor_nelem(t);
  w->nelem = ne > 0 ? (uint64_t)ne : 0;
  w->channel_axis = w->reduction_axis = -1;
  w->consumer_input = -1;
  w->index = (uint32_t)m->nw;
  r->graph = g;
  r->tensor = t;
  r->node = node;
  m->nw++;
}

static void list_graph(list_ctx *c, Onnx__GraphProto *g, const char *path) {
  for (size_t i = 0; i < g->n_initializer; i++)
    list_add(c, g, path, g->initializer[i], NULL, g->initializer[i]->name);
  for (size_t i = 0; i < g->n_node; i++) {
    Onnx__NodeProto *n = g->node[i];
    if (!is_op(n, "Constant") || n->n_output < 1) continue;
    Onnx__AttributeProto *v = mopt_int_node_attr(n, "value");
    if (v && v->t) list_add(c, g, path, v->t, n, n->output[0]);
  }
  for (size_t i = 0; i < g->n_node && !c->err; i++) {
    Onnx__NodeProto *n = g->node[i];
    for (size_t a = 0; a < n->n_attribute; a++) {
      Onnx__AttributeProto *at = n->attribute[a];
      if (!at->g && !at->n_graphs) continue;
      char lbl[96];
      const char *label = n->name && n->name[0] ? n->name : lbl;
      if (label == lbl) snprintf(lbl, sizeof lbl, "%s_%zu", n->op_type ? n->op_type : "node", i);
      size_t len = strlen(path) + strlen(label) + strlen(at->name ? at->name : "") + 32;
      if (at->g) {
        char *p = mopt_int_own(c->m, malloc(len));
        if (!p) { c->err = MOPT_ENOMEM; return; }
        snprintf(p, len, "%s/%s.%s", path, label, at->name ? at->name : "");
        list_graph(c, at->g, p);
      }
      for (size_t k = 0; k < at->n_graphs; k++) {
        char *p = mopt_int_own(c->m, malloc(len));
        if (!p) { c->err = MOPT_ENOMEM; return; }
        snprintf(p, len, "%s/%s.%s[%zu]", path, label, at->name ? at->name : "", k);
        list_graph(c, at->graphs[k], p);
      }
    }
  }
}

/* Records the prefix before every "__mopt_" in name (see mopt_model.reserved). */
static int reserve_name(mopt_model *m, const char *name) {
  if (!name) return 0;
  for (const char *p = strstr(name, "__mopt_"); p; p = strstr(p + 1, "__mopt_")) {
    char *pre = mopt_int_own(m, strndup(name, (size_t)(p - name)));
    if (!pre) return MOPT_ENOMEM;
    int rc = mopt_nameset_add(&m->reserved, pre);
    if (rc) return rc;
  }
  return 0;
}

static int reserve_graph(mopt_model *m, const Onnx__GraphProto *g) {
  int rc = 0;
  for (size_t i = 0; i < g->n_input && !rc; i++) rc = reserve_name(m, g->input[i]->name);
  for (size_t i = 0; i < g->n_initializer && !rc; i++) rc = reserve_name(m, g->initializer[i]->name);
  for (size_t i = 0; i < g->n_node && !rc; i++) {
    const Onnx__NodeProto *n = g->node[i];
    for (size_t k = 0; k < n->n_output && !rc; k++) rc = reserve_name(m, n->output[k]);
    for (size_t a = 0; a < n->n_attribute && !rc; a++) {
      if (n->attribute[a]->g) rc = reserve_graph(m, n->attribute[a]->g);
      for (size_t k = 0; k < n->attribute[a]->n_graphs && !rc; k++)
        rc = reserve_graph(m, n->attribute[a]->graphs[k]);
    }
  }
  return rc;
}

int mopt_model_weights(mopt_model *m, mopt_weight **list, size_t *n) {
  if (!m || !list || !n) return MOPT_EINVAL;
  if (!m->listed) {
    list_ctx c = {.m = m};
    m->nw = 0;
    list_graph(&c, m->pb->graph, "main");
    if (c.err) { m->nw = 0; return c.err; }
    use_index ix;
    int rc = ui_build(&ix, m->pb->graph);
    if (rc) { ui_free(&ix); m->nw = 0; return rc; }
    for (size_t i = 0; i < m->nw; i++) {
      find_consumer(&ix, &m->w[i], &m->wr[i]);
      if (m->w[i].consumer_op) {
        m->w[i].consumer_op = mopt_int_own(m, strdup(m->w[i].consumer_op));
        if (!m->w[i].consumer_op) { ui_free(&ix); m->nw = 0; return MOPT_ENOMEM; }
      }
    }
    ui_free(&ix);
    if (!m->reserved.slots && (rc = mopt_nameset_init(&m->reserved, NULL))) { m->nw = 0; return rc; }
    if ((rc = reserve_graph(m, m->pb->graph))) { m->nw = 0; return rc; }
    m->listed = 1;
  }
  *list = m->w;
  *n = m->nw;
  return 0;
}

const void *mopt_weight_f32_mapped(const mopt_model *m, const mopt_weight *w) {
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
  (void)m; (void)w;
  return NULL;
#else
  if (!m || !w || w->index >= m->nw || &m->w[w->index] != w) return NULL;
  const Onnx__TensorProto *t = m->wr[w->index].tensor;
  if (!t || !t->has_data_type || t->data_type != MOPT_DT_FLOAT || !t->has_raw_data) return NULL;
  if (t->raw_data.len != w->nelem * 4 || !w->nelem) return NULL;
  if (!mopt_int_in_mapping(m, t->raw_data.data)) return NULL;   /* not a streamed placeholder */
  return t->raw_data.data;
#endif
}

int mopt_weight_read_f32(const mopt_model *m, const mopt_weight *w, float **out, mopt_diag *diag) {
  if (!m || !w || !out || w->index >= m->nw || &m->w[w->index] != w)
    return mopt_diag_set(diag, MOPT_EINVAL, w ? w->name : "", "weight does not belong to model");
  if (!m->wr[w->index].tensor && m->nstreamed)
    return mopt_diag_set(diag, MOPT_EINVAL, w->name,
                         "model holds streamed tensors: encoded weights cannot be read back");
  *out = NULL;
  float *buf = malloc(w->nelem ? w->nelem * sizeof(float) : 1);
  if (!buf) return MOPT_ENOMEM;
  const mopt_wrec *r = &m->wr[w->index];
  int rc = r->tensor ? mopt_int_tensor_to_f32(r->tensor, buf, w->nelem, diag)
                     : mopt_int_eval_encoded(m, w, buf, diag);
  if (rc) { free(buf); return rc; }
  *out = buf;
  return 0;
}
