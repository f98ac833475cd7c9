/* tests for core/encode.c: every encoder at opsets 9/11/13/17/21 — graph structure of the saved
 * model (inspected by unpacking the bytes), reload validity (topological order, no missing
 * inputs), byte stability, and the numeric round trip: the rebuild nodes evaluated by
 * mopt_weight_read_f32 must equal the formula the test computes itself. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <unistd.h>

#include "model_builder.h"

static const int64_t OPSETS[5] = {9, 11, 13, 17, 21};

/* MLP + a Constant weight + an If whose branches hold an initializer / a Constant weight. */
static Onnx__ModelProto *enc_model(int64_t opset, int32_t dt) {
  Onnx__ModelProto *pm = mb_mlp(opset);
  Onnx__GraphProto *g = pm->graph;
  int64_t wd[2] = {8, 8}, sc[1] = {1};
  mb_input(g, "c", MOPT_DT_BOOL, 0, sc);
  mb_constant(g, "Wk", mb_tensor_seq("Wk", 2, wd, 7));
  mb_node(g, "MatMul", "Y,Wk", "Z", "mk");
  Onnx__GraphProto *t = mb_graph_new("then"), *e = mb_graph_new("else");
  mb_init(t, mb_tensor_seq("Wt", 2, wd, 8));
  mb_node(t, "MatMul", "Z,Wt", "yt", NULL);
  mb_output(t, "yt", dt);
  mb_constant(e, "We", mb_tensor_seq("We", 2, wd, 9));
  mb_node(e, "MatMul", "Z,We", "ye", NULL);
  mb_output(e, "ye", dt);
  Onnx__NodeProto *n = mb_node(g, "If", "c", "out", "branch");
  mb_attr_g(n, "then_branch", t);
  mb_attr_g(n, "else_branch", e);
  mb_output(g, "out", dt);
  if (dt == MOPT_DT_FLOAT16) { /* convert every float initializer / constant to fp16 */
    Onnx__TensorProto *ts[8];
    int nt = 0;
    for (size_t i = 0; i < g->n_initializer; i++) ts[nt++] = g->initializer[i];
    ts[nt++] = g->node[2]->attribute[0]->t;
    ts[nt++] = t->initializer[0];
    ts[nt++] = e->node[0]->attribute[0]->t;
    for (int i = 0; i < nt; i++) {
      size_t n4 = ts[i]->raw_data.len / 4;
      uint16_t *h = mb_alloc(n4 * 2);
      for (size_t k = 0; k < n4; k++) {
        float f;
        memcpy(&f, ts[i]->raw_data.data + 4 * k, 4);
        h[k] = mopt_f32_to_f16(f);
      }
      free(ts[i]->raw_data.data);
      ts[i]->raw_data.data = (uint8_t *)h;
      ts[i]->raw_data.len = n4 * 2;
      ts[i]->data_type = MOPT_DT_FLOAT16;
    }
    g->input[0]->type->tensor_type->elem_type = MOPT_DT_FLOAT16;
    g->output[0]->type->tensor_type->elem_type = MOPT_DT_FLOAT16;
  }
  return pm;
}

/* 1: load through a file (mmap, tensor payloads borrowed from the mapping), 0: from memory */
static int g_via_file;

/* Loads pm (and frees it) from memory or through a file, per g_via_file. */
static int load_pm(Onnx__ModelProto *pm, mopt_model **m, mopt_diag *d) {
  if (!g_via_file) return mb_load(pm, m, d);
  char path[] = "/tmp/mopt-encode-test.XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  size_t len;
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  assert_int_equal(write(fd, b, len), (ssize_t)len);
  close(fd);
  free(b);
  int rc = mopt_model_load_file(path, NULL, m, d);
  unlink(path); /* the mapping stays valid */
  return rc;
}

static mopt_model *load_enc(int64_t opset, int32_t dt) {
  mopt_model *m;
  mopt_diag d;
  int rc;
  if (g_via_file) {
    char path[] = "/tmp/mopt-encode-test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len;
    Onnx__ModelProto *pm = enc_model(opset, dt);
    uint8_t *b = mb_pack(pm, &len);
    mb_free(pm);
    assert_int_equal(write(fd, b, len), (ssize_t)len);
    close(fd);
    free(b);
    rc = mopt_model_load_file(path, NULL, &m, &d);
    unlink(path); /* the mapping stays valid */
  } else {
    rc = mb_load(enc_model(opset, dt), &m, &d);
  }
  if (rc) fail_msg("load: %s @ %s", d.msg, d.where);
  return m;
}

static int via_file(void **state) { (void)state; g_via_file = 1; return 0; }
static int via_memory(void **state) { (void)state; g_via_file = 0; return 0; }

static const mopt_weight *wget(mopt_model *m, const char *name) {
  mopt_weight *w;
  size_t n;
  assert_int_equal(mopt_model_weights(m, &w, &n), 0);
  for (size_t i = 0; i < n; i++)
    if (strcmp(w[i].name, name) == 0) return &w[i];
  fail_msg("no weight %s", name);
  return NULL;
}

/* Saves, reloads (full validation), checks byte stability; returns the unpacked saved model. */
static Onnx__ModelProto *save_check(mopt_model *m) {
  uint8_t *b, *b2;
  size_t len, len2;
  assert_int_equal(mopt_model_save(m, &b, &len), 0);
  mopt_model *m2;
  mopt_diag d;
  int rc = mopt_model_load(b, len, NULL, &m2, &d);
  if (rc) fail_msg("reload: %s @ %s", d.msg, d.where);
  assert_int_equal(mopt_model_save(m2, &b2, &len2), 0);
  assert_int_equal(len2, len);
  assert_memory_equal(b2, b, len);
  mopt_model_destroy(m2);
  Onnx__ModelProto *pm = onnx__model_proto__unpack(NULL, len, b);
  assert_non_null(pm);
  free(b);
  free(b2);
  return pm;
}

static const Onnx__TensorProto *find_init(const Onnx__GraphProto *g, const char *name) {
  for (size_t i = 0; i < g->n_initializer; i++)
    if (strcmp(g->initializer[i]->name, name) == 0) return g->initializer[i];
  return NULL;
}
static const Onnx__NodeProto *find_producer(const Onnx__GraphProto *g, const char *out, size_t *pos) {
  for (size_t i = 0; i < g->n_node; i++)
    if (g->node[i]->n_output && strcmp(g->node[i]->output[0], out) == 0) {
      if (pos) *pos = i;
      return g->node[i];
    }
  return NULL;
}
static size_t count_op(const Onnx__GraphProto *g, const char *op) {
  size_t c = 0;
  for (size_t i = 0; i < g->n_node; i++) c += strcmp(g->node[i]->op_type, op) == 0;
  return c;
}
static int64_t node_int(const Onnx__NodeProto *n, const char *name, int64_t dflt) {
  for (size_t i = 0; i < n->n_attribute; i++)
    if (strcmp(n->attribute[i]->name, name) == 0) return n->attribute[i]->i;
  return dflt;
}

/* ---------------------------------------------------------------- quantize ---- */
typedef struct qcase { int32_t qtype; int gran; /* 0 tensor 1 channel 2 block */ int affine; } qcase;

/* Quantizes w with the test's own simple rules and returns the expected reconstruction. */
static float *quantize_ref(const mopt_weight *w, const float *f, const qcase *c, mopt_qtensor *qt) {
  int32_t lo, hi;
  switch (c->qtype) {
  case MOPT_DT_INT8: lo = -128; hi = 127; break;
  case MOPT_DT_UINT8: lo = 0; hi = 255; break;
  case MOPT_DT_INT4: lo = -8; hi = 7; break;
  default: lo = 0; hi = 15; break;
  }
  int axis = c->gran == 0 ? -1 : w->channel_axis;
  int64_t bs = c->gran == 2 ? 3 : 0; /* 3 does not divide 8 or 16: ragged last block */
  int64_t D = axis >= 0 ? w->dims[axis] : 1, inner = 1;
  for (int k = axis + 1; axis >= 0 && k < w->ndim; k++) inner *= w->dims[k];
  int64_t nb = bs ? (D + bs - 1) / bs : D;
  size_t ns = axis < 0 ? 1 : bs ? w->nelem / (uint64_t)D * (uint64_t)nb : (size_t)D;
  float *sc = mb_alloc(ns * 4), *mn = mb_alloc(ns * 4), *mx = mb_alloc(ns * 4);
  int32_t *zp = mb_alloc(ns * 4), *q = mb_alloc(w->nelem * 4);
  size_t *si = mb_alloc(w->nelem * sizeof *si);
  for (uint64_t k = 0; k < w->nelem; k++) {
    size_t s = 0;
    if (axis >= 0) {
      int64_t o = (int64_t)k / (inner * D), a = ((int64_t)k / inner) % D, in = (int64_t)k % inner;
      s = (size_t)(bs ? (o * nb + a / bs) * inner + in : a);
    }
    si[k] = s;
    if (f[k] < mn[s]) mn[s] = f[k];
    if (f[k] > mx[s]) mx[s] = f[k];
  }
  for (size_t s = 0; s < ns; s++) {
    if (c->affine) {
      sc[s] = (mx[s] - mn[s]) / (float)(hi - lo);
      if (sc[s] == 0) sc[s] = 1;
      long z = lo - lrintf(mn[s] / sc[s]);
      zp[s] = (int32_t)(z < lo ? lo : z > hi ? hi : z);
    } else {
      sc[s] = fmaxf(-mn[s], mx[s]) / (float)hi;
      if (sc[s] == 0) sc[s] = 1;
    }
  }
  float *expv = mb_alloc(w->nelem * 4);
  for (uint64_t k = 0; k < w->nelem; k++) {
    long v = lrintf(f[k] / sc[si[k]]) + zp[si[k]];
    q[k] = (int32_t)(v < lo ? lo : v > hi ? hi : v);
    expv[k] = (float)(q[k] - zp[si[k]]) * sc[si[k]];
  }
  free(mn); free(mx); free(si);
  qt->qtype = c->qtype;
  qt->axis = axis;
  qt->block_size = bs;
  qt->q = q;
  qt->scales = sc;
  qt->zero_points = c->affine ? zp : NULL;
  qt->n_scales = ns;
  if (!c->affine) free(zp);
  return expv;
}

static void check_close(const float *a, const float *b, uint64_t n, float tol, const char *what) {
  for (uint64_t i = 0; i < n; i++)
    if (fabsf(a[i] - b[i]) > tol * (1.0f + fabsf(b[i])))
      fail_msg("%s[%llu]: %g vs %g", what, (unsigned long long)i, a[i], b[i]);
}

static void test_quantize_all_forms(void **state) {
  (void)state;
  const qcase cases[] = {
    {MOPT_DT_INT8, 0, 0}, {MOPT_DT_UINT8, 0, 1}, {MOPT_DT_INT8, 1, 0}, {MOPT_DT_UINT8, 1, 1},
    {MOPT_DT_INT8, 2, 0}, {MOPT_DT_INT4, 0, 0}, {MOPT_DT_INT4, 1, 0}, {MOPT_DT_UINT4, 1, 1},
    {MOPT_DT_INT4, 2, 0}, {MOPT_DT_UINT4, 2, 1},
  };
  const char *names[] = {"W1", "W2", "Wk", "Wt", "We"};
  for (int oi = 0; oi < 5; oi++) {
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
      const qcase *c = &cases[ci];
      int64_t opset = OPSETS[oi];
      mopt_model *m = load_enc(opset, MOPT_DT_FLOAT);
      for (int wi = 0; wi < 5; wi++) {
        const mopt_weight *w = wget(m, names[wi]);
        assert_true(w->is_weight);
        float *f;
        mopt_diag d;
        assert_int_equal(mopt_weight_read_f32(m, w, &f, &d), 0);
        mopt_qtensor qt;
        float *expv = quantize_ref(w, f, c, &qt);
        int rc = mopt_weight_set_quantized(m, w, &qt, &d);
        if (rc) fail_msg("opset %lld case %zu %s: %s", (long long)opset, ci, w->name, d.msg);
        float *got;
        rc = mopt_weight_read_f32(m, w, &got, &d);
        if (rc) fail_msg("read back %s: %s", w->name, d.msg);
        check_close(got, expv, w->nelem, 1e-6f, w->name);
        /* and the quantization itself is close to the original values */
        float tolq = (c->qtype == MOPT_DT_INT8 || c->qtype == MOPT_DT_UINT8) ? 0.01f : 0.15f;
        check_close(got, f, w->nelem, tolq, "vs original");
        free(got); free(f); free(expv);
        free((void *)qt.q); free((void *)qt.scales); free((void *)qt.zero_points);
      }
      Onnx__ModelProto *pm = save_check(m);
      int four = c->qtype == MOPT_DT_INT4 || c->qtype == MOPT_DT_UINT4;
      int64_t need = (c->gran == 2 || four) ? 21 : c->gran == 1 ? 13 : 10;
      const Onnx__GraphProto *g = pm->graph;
      const Onnx__TensorProto *q = find_init(g, "W1__mopt_q");
      assert_non_null(q);
      assert_null(find_init(g, "W1"));
      size_t pos;
      const Onnx__NodeProto *prod = find_producer(g, "W1", &pos);
      assert_non_null(prod);
      if (opset >= need) {
        assert_string_equal(prod->op_type, "DequantizeLinear");
        assert_int_equal(q->data_type, c->qtype);
        if (c->gran >= 1) assert_int_equal(node_int(prod, "axis", -99), 1);
        if (c->gran == 2) assert_int_equal(node_int(prod, "block_size", 0), 3);
        assert_int_equal(prod->n_input, c->affine ? 3 : 2);
        if (four) assert_true(pm->ir_version >= 10);
      } else {
        assert_string_equal(prod->op_type, "Mul");
        assert_int_equal(count_op(g, "DequantizeLinear"), 0);
        assert_int_equal(q->data_type, (c->qtype == MOPT_DT_INT8 || c->qtype == MOPT_DT_INT4)
                                           ? MOPT_DT_INT8 : MOPT_DT_UINT8);
        if (c->gran == 2) assert_non_null(find_init(g, "W1__mopt_block_idx"));
      }
      /* rebuild nodes come first, before the consumer MatMul */
      size_t cpos;
      find_producer(g, "h", &cpos);
      assert_true(pos < cpos);
      /* the Constant weight was replaced in place: Constant nodes for the encoded tensors */
      const Onnx__NodeProto *kq = find_producer(g, "Wk__mopt_q", NULL);
      assert_non_null(kq);
      assert_string_equal(kq->op_type, "Constant");
      assert_non_null(find_producer(g, "Wk", NULL));
      /* the If branches got their own rebuild nodes */
      const Onnx__GraphProto *tb = NULL, *eb = NULL;
      for (size_t i = 0; i < g->n_node; i++)
        if (strcmp(g->node[i]->op_type, "If") == 0) {
          tb = g->node[i]->attribute[0]->g;
          eb = g->node[i]->attribute[1]->g;
        }
      assert_non_null(find_init(tb, "Wt__mopt_q"));
      assert_non_null(find_producer(tb, "Wt", NULL));
      assert_non_null(find_producer(eb, "We", NULL));
      mb_free(pm);
      mopt_model_destroy(m);
    }
  }
}

static void test_quantize_fp16_model(void **state) {
  (void)state;
  for (int oi = 2; oi < 5; oi++) {
    mopt_model *m = load_enc(OPSETS[oi], MOPT_DT_FLOAT16);
    const mopt_weight *w = wget(m, "W1");
    assert_int_equal(w->dtype, MOPT_DT_FLOAT16);
    float *f;
    mopt_diag d;
    assert_int_equal(mopt_weight_read_f32(m, w, &f, &d), 0);
    qcase c = {MOPT_DT_INT8, 1, 0};
    mopt_qtensor qt;
    float *expv = quantize_ref(w, f, &c, &qt);
    assert_int_equal(mopt_weight_set_quantized(m, w, &qt, &d), 0);
    float *got;
    assert_int_equal(mopt_weight_read_f32(m, w, &got, &d), 0);
    /* the final Cast to float16 rounds: compare with fp16 rounding of the expected values */
    for (uint64_t k = 0; k < w->nelem; k++) expv[k] = mopt_f16_to_f32(mopt_f32_to_f16(expv[k]));
    check_close(got, expv, w->nelem, 0, "fp16 model");
    Onnx__ModelProto *pm = save_check(m);
    const Onnx__NodeProto *prod = find_producer(pm->graph, "W1", NULL);
    assert_string_equal(prod->op_type, "Cast");
    assert_int_equal(node_int(prod, "to", 0), MOPT_DT_FLOAT16);
    mb_free(pm);
    free(got); free(f); free(expv);
    free((void *)qt.q); free((void *)qt.scales);
    mopt_model_destroy(m);
  }
}

static void test_quantize_errors(void **state) {
  (void)state;
  mopt_model *m = load_enc(13, MOPT_DT_FLOAT);
  const mopt_weight *w = wget(m, "W1");
  int32_t *q = mb_alloc(w->nelem * 4);
  float s[32];
  for (int i = 0; i < 32; i++) s[i] = 0.1f;
  mopt_diag d;
  mopt_qtensor qt = {MOPT_DT_INT8, 1, 0, q, s, NULL, 31};
  assert_int_equal(mopt_weight_set_quantized(m, w, &qt, &d), MOPT_EINVAL); /* 31 scales, need 32 */
  qt.n_scales = 32;
  q[5] = 128;
  assert_int_equal(mopt_weight_set_quantized(m, w, &qt, &d), MOPT_EINVAL); /* out of int8 range */
  q[5] = 0;
  qt.qtype = MOPT_DT_FLOAT;
  assert_int_equal(mopt_weight_set_quantized(m, w, &qt, &d), MOPT_EINVAL);
  qt.qtype = MOPT_DT_INT8;
  qt.axis = 2;
  assert_int_equal(mopt_weight_set_quantized(m, w, &qt, &d), MOPT_EINVAL);
  qt.axis = 1;
  assert_int_equal(mopt_weight_set_quantized(m, w, &qt, &d), 0);
  /* a second encoding of the same weight is a conflict */
  assert_int_equal(mopt_weight_set_quantized(m, w, &qt, &d), MOPT_ECONFLICT);
  float v[512] = {0};
  assert_int_equal(mopt_weight_set_dense(m, w, v, &d), MOPT_ECONFLICT);
  /* non-float tensors cannot be encoded */
  free(q);
  mopt_model_destroy(m);
}

/* ---------------------------------------------------------------- LUT ---- */
static void test_lut(void **state) {
  (void)state;
  const int ks[2] = {16, 40};
  for (int oi = 0; oi < 5; oi++) {
    for (int ki = 0; ki < 2; ki++) {
      for (int per_ch = 0; per_ch < 2; per_ch++) {
        int64_t opset = OPSETS[oi];
        int k = ks[ki];
        mopt_model *m = load_enc(opset, MOPT_DT_FLOAT);
        const char *names[] = {"W1", "W2", "Wk", "Wt", "We"};
        for (int wi = 0; wi < 5; wi++) {
          const mopt_weight *w = wget(m, names[wi]);
          int axis = per_ch ? w->channel_axis : -1;
          size_t nt = axis < 0 ? 1 : (size_t)w->dims[axis];
          int64_t inner = 1;
          for (int j = axis + 1; axis >= 0 && j < w->ndim; j++) inner *= w->dims[j];
          float *tab = mb_alloc(nt * (size_t)k * 4);
          for (size_t t = 0; t < nt * (size_t)k; t++) tab[t] = (float)t * 0.01f - 0.3f;
          uint8_t *idx = mb_alloc(w->nelem);
          float *expv = mb_alloc(w->nelem * 4);
          for (uint64_t j = 0; j < w->nelem; j++) {
            idx[j] = (uint8_t)((j * 7 + 3) % (uint64_t)k);
            size_t c = axis < 0 ? 0 : (size_t)(((int64_t)j / inner) % w->dims[axis]);
            expv[j] = tab[c * (size_t)k + idx[j]];
          }
          mopt_lut lut = {k, axis, nt, idx, tab};
          mopt_diag d;
          int rc = mopt_weight_set_lut(m, w, &lut, &d);
          if (rc) fail_msg("lut %s: %s", w->name, d.msg);
          float *got;
          assert_int_equal(mopt_weight_read_f32(m, w, &got, &d), 0);
          check_close(got, expv, w->nelem, 0, w->name);
          free(got); free(tab); free(idx); free(expv);
        }
        Onnx__ModelProto *pm = save_check(m);
        const Onnx__GraphProto *g = pm->graph;
        const Onnx__NodeProto *prod = find_producer(g, "W1", NULL);
        assert_string_equal(prod->op_type, "Gather");
        const Onnx__TensorProto *it = find_init(g, "W1__mopt_idx");
        assert_non_null(it);
        int packed = opset >= 21 && k <= 16;
        assert_int_equal(it->data_type, packed ? MOPT_DT_UINT4 : MOPT_DT_UINT8);
        assert_int_equal(it->raw_data.len, packed ? 256 : 512);
        const Onnx__NodeProto *cast = find_producer(g, "W1__mopt_idx32", NULL);
        assert_string_equal(cast->op_type, "Cast");
        assert_int_equal(node_int(cast, "to", 0), MOPT_DT_INT32);
        assert_int_equal(find_producer(g, "W1__mopt_idx_off", NULL) != NULL, per_ch);
        mb_free(pm);
        mopt_model_destroy(m);
      }
    }
  }
  /* invalid LUTs */
  mopt_model *m = load_enc(13, MOPT_DT_FLOAT);
  const mopt_weight *w = wget(m, "W1");
  uint8_t idx[512] = {0};
  float tab[16] = {0};
  mopt_diag d;
  idx[3] = 16;
  mopt_lut lut = {16, -1, 1, idx, tab};
  assert_int_equal(mopt_weight_set_lut(m, w, &lut, &d), MOPT_EINVAL);
  idx[3] = 0;
  lut.k = 1;
  assert_int_equal(mopt_weight_set_lut(m, w, &lut, &d), MOPT_EINVAL);
  lut.k = 16;
  lut.axis = 1;
  assert_int_equal(mopt_weight_set_lut(m, w, &lut, &d), MOPT_EINVAL); /* 1 table, need 32 */
  mopt_model_destroy(m);
}

/* ---------------------------------------------------------------- fp16 / dense ---- */
static void test_f16_and_dense(void **state) {
  (void)state;
  for (int oi = 0; oi < 5; oi++) {
    mopt_model *m = load_enc(OPSETS[oi], MOPT_DT_FLOAT);
    const mopt_weight *w1 = wget(m, "W1"), *wk = wget(m, "Wk"), *w2 = wget(m, "W2");
    float *f;
    mopt_diag d;
    assert_int_equal(mopt_weight_read_f32(m, w1, &f, &d), 0);
    uint16_t *h = mb_alloc(w1->nelem * 2);
    for (uint64_t k = 0; k < w1->nelem; k++) h[k] = mopt_f32_to_f16(f[k]);
    assert_int_equal(mopt_weight_set_f16(m, w1, h, &d), 0);
    float *got;
    assert_int_equal(mopt_weight_read_f32(m, w1, &got, &d), 0);
    for (uint64_t k = 0; k < w1->nelem; k++) assert_true(got[k] == mopt_f16_to_f32(h[k]));
    free(got);
    free(h);
    free(f);
    assert_int_equal(mopt_weight_read_f32(m, wk, &f, &d), 0);
    h = mb_alloc(wk->nelem * 2);
    for (uint64_t k = 0; k < wk->nelem; k++) h[k] = mopt_f32_to_f16(f[k]);
    assert_int_equal(mopt_weight_set_f16(m, wk, h, &d), 0);
    free(h);
    free(f);
    /* dense: half the values zeroed, stays a float32 initializer */
    assert_int_equal(mopt_weight_read_f32(m, w2, &f, &d), 0);
    for (uint64_t k = 0; k < w2->nelem; k += 2) f[k] = 0;
    assert_int_equal(mopt_weight_set_dense(m, w2, f, &d), 0);
    assert_int_equal(mopt_weight_read_f32(m, w2, &got, &d), 0);
    assert_memory_equal(got, f, w2->nelem * 4);
    free(got);
    free(f);
    Onnx__ModelProto *pm = save_check(m);
    const Onnx__TensorProto *t = find_init(pm->graph, "W1__mopt_f16");
    assert_non_null(t);
    assert_int_equal(t->data_type, MOPT_DT_FLOAT16);
    const Onnx__NodeProto *c = find_producer(pm->graph, "W1", NULL);
    assert_string_equal(c->op_type, "Cast");
    assert_int_equal(node_int(c, "to", 0), MOPT_DT_FLOAT);
    assert_string_equal(find_producer(pm->graph, "Wk__mopt_f16", NULL)->op_type, "Constant");
    t = find_init(pm->graph, "W2");
    assert_int_equal(t->data_type, MOPT_DT_FLOAT);
    assert_int_equal(t->raw_data.len, 1024);
    mb_free(pm);
    mopt_model_destroy(m);
  }
  /* an fp16 model: set_f16 stores in place without a Cast; dense keeps float16 */
  mopt_model *m = load_enc(17, MOPT_DT_FLOAT16);
  const mopt_weight *w1 = wget(m, "W1"), *w2 = wget(m, "W2");
  uint16_t h[512];
  for (int k = 0; k < 512; k++) h[k] = mopt_f32_to_f16((float)k / 512.0f);
  mopt_diag d;
  assert_int_equal(mopt_weight_set_f16(m, w1, h, &d), 0);
  float v[256];
  for (int k = 0; k < 256; k++) v[k] = (float)k;
  assert_int_equal(mopt_weight_set_dense(m, w2, v, &d), 0);
  Onnx__ModelProto *pm = save_check(m);
  const Onnx__TensorProto *t = find_init(pm->graph, "W1");
  assert_non_null(t);
  assert_int_equal(t->data_type, MOPT_DT_FLOAT16);
  assert_memory_equal(t->raw_data.data, h, 1024);
  assert_int_equal(count_op(pm->graph, "Cast"), 0);
  t = find_init(pm->graph, "W2");
  assert_int_equal(t->data_type, MOPT_DT_FLOAT16);
  assert_int_equal(t->raw_data.len, 512);
  mb_free(pm);
  mopt_model_destroy(m);
}

/* ---------------------------------------------------------------- low rank ---- */
static void lowrank_factors(const mopt_weight *w, const float *f, int64_t *rank, float **a,
                            float **b) {
  /* exact factorization W = A·B with A = W (consumed layout), B = I */
  int st = w->channel_axis == 0;
  int64_t R = st ? w->dims[1] : w->dims[0], C = st ? w->dims[0] : w->dims[1];
  int64_t r = R < C ? R : C;
  *rank = r;
  *a = mb_alloc((size_t)(R * r) * 4);
  *b = mb_alloc((size_t)(r * C) * 4);
  for (int64_t i = 0; i < R; i++)
    for (int64_t j = 0; j < C; j++) {
      float v = st ? f[j * R + i] : f[i * C + j];
      if (r == R) (*b)[i * C + j] = v; else (*a)[i * r + j] = v;
    }
  for (int64_t j = 0; j < r; j++) {
    if (r == R) (*a)[j * r + j] = 1; else (*b)[j * C + j] = 1;
  }
}

static void test_lowrank(void **state) {
  (void)state;
  for (int oi = 0; oi < 5; oi++) {
    mopt_model *m = load_enc(OPSETS[oi], MOPT_DT_FLOAT);
    const char *names[] = {"W1", "W2", "Wk", "Wt"};
    for (int wi = 0; wi < 4; wi++) {
      const mopt_weight *w = wget(m, names[wi]);
      float *f, *a, *b, *got;
      int64_t rank;
      mopt_diag d;
      assert_int_equal(mopt_weight_read_f32(m, w, &f, &d), 0);
      lowrank_factors(w, f, &rank, &a, &b);
      int rc = mopt_weight_set_lowrank(m, w, rank, a, b, &d);
      if (rc) fail_msg("lowrank %s: %s", w->name, d.msg);
      assert_int_equal(mopt_weight_read_f32(m, w, &got, &d), 0);
      check_close(got, f, w->nelem, 1e-6f, w->name);
      free(f); free(a); free(b); free(got);
    }
    Onnx__ModelProto *pm = save_check(m);
    const Onnx__GraphProto *g = pm->graph;
    /* W1 (MatMul B, used once): X·W1 rewritten as (X·A)·B, W1 no longer exists */
    assert_null(find_producer(g, "W1", NULL));
    assert_null(find_init(g, "W1"));
    const Onnx__NodeProto *mm = find_producer(g, "h", NULL);
    assert_string_equal(mm->input[0], "W1__mopt_lr_xa");
    assert_string_equal(mm->input[1], "W1__mopt_lr_b");
    assert_string_equal(find_producer(g, "W1__mopt_lr_xa", NULL)->op_type, "MatMul");
    /* W2 (Gemm transB=1): rewritten too, B stored transposed [8][rank] */
    const Onnx__NodeProto *gm = find_producer(g, "Y", NULL);
    assert_string_equal(gm->input[0], "W2__mopt_lr_xa");
    const Onnx__TensorProto *b2 = find_init(g, "W2__mopt_lr_b");
    assert_int_equal(b2->dims[0], 8);
    /* the Constant weight: MatMul(A, B) producing Wk */
    assert_string_equal(find_producer(g, "Wk", NULL)->op_type, "MatMul");
    mb_free(pm);
    mopt_model_destroy(m);
  }
  /* fp16 model: the MatMul(A, B) fallback computes in float32 and casts back to float16 */
  {
    mopt_model *m = load_enc(17, MOPT_DT_FLOAT16);
    const mopt_weight *w = wget(m, "Wk");
    float *f, *a, *b, *got;
    int64_t rank;
    mopt_diag d;
    assert_int_equal(mopt_weight_read_f32(m, w, &f, &d), 0);
    lowrank_factors(w, f, &rank, &a, &b);
    assert_int_equal(mopt_weight_set_lowrank(m, w, rank, a, b, &d), 0);
    assert_int_equal(mopt_weight_read_f32(m, w, &got, &d), 0);
    check_close(got, f, w->nelem, 0, "fp16 lowrank"); /* f is exactly representable */
    Onnx__ModelProto *pm = save_check(m);
    const Onnx__NodeProto *c = find_producer(pm->graph, "Wk", NULL);
    assert_string_equal(c->op_type, "Cast");
    assert_int_equal(node_int(c, "to", 0), MOPT_DT_FLOAT16);
    assert_string_equal(find_producer(pm->graph, "Wk__mopt_f32", NULL)->op_type, "MatMul");
    mb_free(pm);
    free(f); free(a); free(b); free(got);
    mopt_model_destroy(m);
  }
  /* not for non-2-D or non-MatMul consumers */
  mopt_model *m = load_enc(13, MOPT_DT_FLOAT);
  const mopt_weight *b2 = wget(m, "b2");
  float a[8] = {0}, b[8] = {0};
  mopt_diag d;
  assert_int_equal(mopt_weight_set_lowrank(m, b2, 1, a, b, &d), MOPT_EUNSUPPORTED);
  mopt_model_destroy(m);
}

/* ---------------------------------------------------------------- misc ---- */
static void test_ir3_graph_inputs(void **state) {
  (void)state;
  /* old style: initializer also listed as a graph input */
  Onnx__ModelProto *pm = mb_mlp(9);
  pm->ir_version = 3;
  int64_t wd[2] = {16, 32};
  mb_input(pm->graph, "W1", MOPT_DT_FLOAT, 2, wd);
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(load_pm(pm, &m, &d), 0);
  const mopt_weight *w = wget(m, "W1");
  uint16_t h[512] = {0};
  assert_int_equal(mopt_weight_set_f16(m, w, h, &d), 0);
  Onnx__ModelProto *out = save_check(m);
  assert_int_equal(out->graph->n_input, 1);
  assert_string_equal(out->graph->input[0]->name, "X");
  assert_true(out->ir_version >= 4);
  mb_free(out);
  mopt_model_destroy(m);
}

static void test_prune_unused(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_mlp(13);
  int64_t d4[1] = {4};
  mb_init(pm->graph, mb_tensor_seq("orphan", 1, d4, 1));
  mb_constant(pm->graph, "orphan_const", mb_tensor_seq("oc", 1, d4, 2));
  mb_init(pm->graph, mb_tensor_seq("as_input", 1, d4, 3));
  mb_input(pm->graph, "as_input", MOPT_DT_FLOAT, 1, d4);
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(load_pm(pm, &m, &d), 0);
  const mopt_weight *orphan = wget(m, "orphan");
  const mopt_weight *w1 = wget(m, "W1");
  assert_int_equal(mopt_model_prune_unused(m), 0);
  float *v;
  assert_int_equal(mopt_weight_read_f32(m, orphan, &v, &d), MOPT_ENOTFOUND);
  assert_int_equal(mopt_weight_read_f32(m, w1, &v, &d), 0);
  free(v);
  Onnx__ModelProto *out = save_check(m);
  assert_null(find_init(out->graph, "orphan"));
  assert_null(find_producer(out->graph, "orphan_const", NULL));
  assert_non_null(find_init(out->graph, "as_input"));
  assert_non_null(find_init(out->graph, "W1"));
  assert_non_null(find_init(out->graph, "b2"));
  assert_int_equal(out->graph->n_node, 2);
  mb_free(out);
  mopt_model_destroy(m);
}

/* Generated names never duplicate existing ones; an optimized model can be optimized again. */
static void test_name_collisions(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_mlp(13);
  int64_t d4[1] = {4};
  mb_init(pm->graph, mb_tensor_seq("W1__mopt_q", 1, d4, 1));
  mb_node(pm->graph, "Relu", "W1__mopt_q", "r", NULL);
  mb_output(pm->graph, "r", MOPT_DT_FLOAT);
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(load_pm(pm, &m, &d), 0);
  const mopt_weight *w = wget(m, "W1");
  uint16_t h[512] = {0};
  assert_int_equal(mopt_weight_set_f16(m, w, h, &d), MOPT_ECONFLICT);
  assert_non_null(strstr(d.msg, "W1__mopt_"));
  assert_int_equal(mopt_weight_set_f16(m, wget(m, "W2"), h, &d), 0);
  mopt_model_destroy(m);
  /* second round: low rank, save, reload, then fp16 on the factors */
  m = load_enc(13, MOPT_DT_FLOAT);
  w = wget(m, "W1");
  float *f, *a, *b;
  int64_t rank;
  assert_int_equal(mopt_weight_read_f32(m, w, &f, &d), 0);
  lowrank_factors(w, f, &rank, &a, &b);
  assert_int_equal(mopt_weight_set_lowrank(m, w, rank, a, b, &d), 0);
  free(f); free(a); free(b);
  uint8_t *bytes;
  size_t len;
  assert_int_equal(mopt_model_save(m, &bytes, &len), 0);
  mopt_model_destroy(m);
  assert_int_equal(mopt_model_load(bytes, len, NULL, &m, &d), 0);
  free(bytes);
  const mopt_weight *fa = wget(m, "W1__mopt_lr_a");
  assert_true(fa->is_weight);
  uint16_t *hh = mb_alloc(fa->nelem * 2);
  assert_int_equal(mopt_weight_set_f16(m, fa, hh, &d), 0);
  free(hh);
  mb_free(save_check(m));
  mopt_model_destroy(m);
}

/* Same model + same encodings → identical bytes. */
static void test_deterministic(void **state) {
  (void)state;
  uint8_t *bytes[2];
  size_t lens[2];
  for (int r = 0; r < 2; r++) {
    mopt_model *m = load_enc(13, MOPT_DT_FLOAT);
    const char *names[] = {"W1", "W2", "Wk", "Wt", "We"};
    for (int wi = 0; wi < 5; wi++) {
      const mopt_weight *w = wget(m, names[wi]);
      float *f;
      mopt_diag d;
      assert_int_equal(mopt_weight_read_f32(m, w, &f, &d), 0);
      qcase c = {MOPT_DT_UINT8, 1, 1};
      mopt_qtensor qt;
      float *expv = quantize_ref(w, f, &c, &qt);
      assert_int_equal(mopt_weight_set_quantized(m, w, &qt, &d), 0);
      free(f); free(expv);
      free((void *)qt.q); free((void *)qt.scales); free((void *)qt.zero_points);
    }
    assert_int_equal(mopt_model_prune_unused(m), 0);
    assert_int_equal(mopt_model_save(m, &bytes[r], &lens[r]), 0);
    mopt_model_destroy(m);
  }
  assert_int_equal(lens[0], lens[1]);
  assert_memory_equal(bytes[0], bytes[1], lens[0]);
  free(bytes[0]);
  free(bytes[1]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup(test_quantize_all_forms, via_memory),
    cmocka_unit_test_setup(test_quantize_fp16_model, via_memory),
    cmocka_unit_test_setup(test_quantize_errors, via_memory),
    cmocka_unit_test_setup(test_lut, via_memory),
    cmocka_unit_test_setup(test_f16_and_dense, via_memory),
    cmocka_unit_test_setup(test_lowrank, via_memory),
    cmocka_unit_test_setup(test_ir3_graph_inputs, via_memory),
    cmocka_unit_test_setup(test_prune_unused, via_memory),
    cmocka_unit_test_setup(test_deterministic, via_memory),
    cmocka_unit_test_setup(test_name_collisions, via_memory),
    cmocka_unit_test_setup(test_quantize_all_forms, via_file),
    cmocka_unit_test_setup(test_quantize_fp16_model, via_file),
    cmocka_unit_test_setup(test_quantize_errors, via_file),
    cmocka_unit_test_setup(test_lut, via_file),
    cmocka_unit_test_setup(test_f16_and_dense, via_file),
    cmocka_unit_test_setup(test_lowrank, via_file),
    cmocka_unit_test_setup(test_ir3_graph_inputs, via_file),
    cmocka_unit_test_setup(test_prune_unused, via_file),
    cmocka_unit_test_setup(test_deterministic, via_file),
    cmocka_unit_test_setup(test_name_collisions, via_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
