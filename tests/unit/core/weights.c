/* tests for core/weights.c: weight listing (initializers, Constant nodes, If/Loop subgraphs),
 * consumer and axis discovery through layout ops, and decoding of every dtype and storage field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>

#include "model_builder.h"

static const mopt_weight *find_w(mopt_weight *w, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(w[i].name, name) == 0) return &w[i];
  fail_msg("weight %s not listed", name);
  return NULL;
}

static void expect(mopt_weight *w, size_t n, const char *name, const char *op, int input, int ch,
                   int red, int is_weight) {
  const mopt_weight *x = find_w(w, n, name);
  if (op) {
    assert_non_null(x->consumer_op);
    assert_string_equal(x->consumer_op, op);
    assert_int_equal(x->consumer_input, input);
  } else {
    assert_null(x->consumer_op);
  }
  assert_int_equal(x->channel_axis, ch);
  assert_int_equal(x->reduction_axis, red);
  assert_int_equal(x->is_weight, is_weight);
}

static void test_mlp(void **state) {
  (void)state;
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(mb_load(mb_mlp(13), &m, &d), 0);
  mopt_weight *w;
  size_t n;
  assert_int_equal(mopt_model_weights(m, &w, &n), 0);
  assert_int_equal(n, 3);
  assert_string_equal(w[0].name, "W1");
  assert_string_equal(w[0].graph_path, "main");
  assert_int_equal(w[0].loc, MOPT_LOC_INITIALIZER);
  assert_int_equal(w[0].ndim, 2);
  assert_int_equal(w[0].dims[0], 16);
  assert_int_equal(w[0].dims[1], 32);
  assert_int_equal(w[0].nelem, 512);
  assert_int_equal(w[0].dtype, MOPT_DT_FLOAT);
  assert_int_equal(w[2].index, 2);
  expect(w, n, "W1", "MatMul", 1, 1, 0, 1);
  expect(w, n, "W2", "Gemm", 1, 0, 1, 1);    /* transB = 1 */
  expect(w, n, "b2", NULL, -1, -1, -1, 0);   /* bias is not a weight */
  /* the list is stable: a second call returns the same array */
  mopt_weight *w2;
  size_t n2;
  assert_int_equal(mopt_model_weights(m, &w2, &n2), 0);
  assert_ptr_equal(w, w2);
  float *v;
  assert_int_equal(mopt_weight_read_f32(m, &w[1], &v, &d), 0);
  float *ref = mb_values(256, 2);
  assert_memory_equal(v, ref, 256 * 4);
  free(ref);
  free(v);
  mopt_model_destroy(m);
}

static void test_consumers(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_model(13, 7);
  Onnx__GraphProto *g = pm->graph;
  int64_t x2[2] = {2, 16}, img[4] = {1, 3, 8, 8}, seq[3] = {5, 1, 6}, ids[1] = {4};
  mb_input(g, "X", MOPT_DT_FLOAT, 2, x2);
  mb_input(g, "I", MOPT_DT_FLOAT, 4, img);
  mb_input(g, "S", MOPT_DT_FLOAT, 3, seq);
  mb_input(g, "ids", MOPT_DT_INT64, 1, ids);
  int64_t d_gA[2] = {16, 2}, d_gB[2] = {16, 8}, d_mA[2] = {4, 2}, d_b3[3] = {4, 16, 8};
  int64_t d_conv[4] = {8, 3, 3, 3}, d_cb[1] = {8}, d_ct[4] = {3, 5, 3, 3};
  int64_t d_lw[3] = {1, 20, 6}, d_lr[3] = {1, 20, 5}, d_lb[2] = {1, 40}, d_emb[2] = {50, 12};
  mb_init(g, mb_tensor_seq("GA", 2, d_gA, 1));       /* Gemm input A with transA */
  mb_init(g, mb_tensor_seq("GB", 2, d_gB, 2));       /* Gemm B, transB = 0 */
  mb_init(g, mb_tensor_seq("MA", 2, d_mA, 3));       /* MatMul input A */
  mb_init(g, mb_tensor_seq("B3", 3, d_b3, 4));       /* batched MatMul B */
  mb_init(g, mb_tensor_seq("Wc", 4, d_conv, 5));
  mb_init(g, mb_tensor_seq("Bc", 1, d_cb, 6));
  mb_init(g, mb_tensor_seq("Wct", 4, d_ct, 7));
  mb_init(g, mb_tensor_seq("LW", 3, d_lw, 8));
  mb_init(g, mb_tensor_seq("LR", 3, d_lr, 9));
  mb_init(g, mb_tensor_seq("LB", 2, d_lb, 10));
  mb_init(g, mb_tensor_seq("E", 2, d_emb, 11));
  Onnx__NodeProto *n = mb_node(g, "Gemm", "GA,GB", "g1", NULL);
  mb_attr_i(n, "transA", 1);
  mb_node(g, "MatMul", "MA,g1", "m1", NULL);
  mb_node(g, "MatMul", "m1,B3", "m2", NULL);
  mb_node(g, "Conv", "I,Wc,Bc", "c1", NULL);
  mb_node(g, "ConvTranspose", "c1,Wct", "c2", NULL);
  n = mb_node(g, "LSTM", "S,LW,LR,LB", "ly", NULL);
  mb_attr_i(n, "hidden_size", 5);
  mb_node(g, "Gather", "E,ids", "emb", NULL);
  mb_output(g, "m2", MOPT_DT_FLOAT);
  mb_output(g, "c2", MOPT_DT_FLOAT);
  mb_output(g, "ly", MOPT_DT_FLOAT);
  mb_output(g, "emb", MOPT_DT_FLOAT);
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(mb_load(pm, &m, &d), 0);
  mopt_weight *w;
  size_t cnt;
  assert_int_equal(mopt_model_weights(m, &w, &cnt), 0);
  assert_int_equal(cnt, 11);
  expect(w, cnt, "GA", "Gemm", 0, 1, 0, 1);
  expect(w, cnt, "GB", "Gemm", 1, 1, 0, 1);
  expect(w, cnt, "MA", "MatMul", 0, 0, 1, 1);
  expect(w, cnt, "B3", "MatMul", 1, 2, 1, 1);
  expect(w, cnt, "Wc", "Conv", 1, 0, 1, 1);
  expect(w, cnt, "Bc", NULL, -1, -1, -1, 0);
  expect(w, cnt, "Wct", "ConvTranspose", 1, 1, 0, 1);
  expect(w, cnt, "LW", "LSTM", 1, 1, 2, 1);
  expect(w, cnt, "LR", "LSTM", 2, 1, 2, 1);
  expect(w, cnt, "LB", NULL, -1, -1, -1, 0);
  expect(w, cnt, "E", "Gather", 0, 0, -1, 1);
  mopt_model_destroy(m);
}

/* Transpose / Reshape / Identity / Cast / Squeeze / Unsqueeze between weight and consumer. */
static void test_layout_ops(void **state) {
  (void)state;
  for (int opset = 11; opset <= 13; opset += 2) {
    Onnx__ModelProto *pm = mb_model(opset, opset == 13 ? 7 : 6);
    Onnx__GraphProto *g = pm->graph;
    int64_t x2[2] = {2, 16}, x3[3] = {1, 2, 16};
    mb_input(g, "X", MOPT_DT_FLOAT, 2, x2);
    mb_input(g, "X3", MOPT_DT_FLOAT, 3, x3);
    int64_t d_t[2] = {8, 16}, d_r[2] = {16, 8}, d_n[2] = {16, 8}, d_u[2] = {16, 8}, d_s[3] = {16, 1, 8};
    int64_t d_c[2] = {16, 8}, d_ti[3] = {8, 1, 16};
    mb_init(g, mb_tensor_seq("Wt", 2, d_t, 1));
    mb_init(g, mb_tensor_seq("Wr", 2, d_r, 2));
    mb_init(g, mb_tensor_seq("Wn", 2, d_n, 3));
    mb_init(g, mb_tensor_seq("Wu", 2, d_u, 4));
    mb_init(g, mb_tensor_seq("Ws", 3, d_s, 5));
    mb_init(g, mb_tensor_seq("Wc", 2, d_c, 6));
    mb_init(g, mb_tensor_seq("Wti", 3, d_ti, 7));
    int64_t s1[1] = {3}, s2[1] = {2}, sh_r[3] = {1, 16, -1}, sh_n[2] = {8, 16}, ax0[1] = {0}, ax1[1] = {1};
    mb_init(g, mb_tensor_i64("shape_r", 1, s1, sh_r));
    mb_init(g, mb_tensor_i64("shape_n", 1, s2, sh_n));
    /* Transpose(perm 1,0) → MatMul B: consumed [16,8] channel = consumed dim 1 = stored dim 0 */
    Onnx__NodeProto *n = mb_node(g, "Transpose", "Wt", "t1", NULL);
    int64_t perm[2] = {1, 0};
    mb_attr_ints(n, "perm", 2, perm);
    mb_node(g, "MatMul", "X,t1", "y1", NULL);
    /* Reshape to [1,16,8] (only a leading 1 added): axes map */
    mb_node(g, "Reshape", "Wr,shape_r", "r1", NULL);
    mb_node(g, "MatMul", "X3,r1", "y2", NULL);
    /* Reshape that mixes axes: channel unknown but still a weight */
    mb_node(g, "Reshape", "Wn,shape_n", "r2", NULL);
    mb_node(g, "Transpose", "r2", "r3", NULL); /* default perm: reverse */
    mb_node(g, "MatMul", "X,r3", "y3", NULL);
    /* Unsqueeze axis 0 then Squeeze it again, through Identity */
    if (opset == 13) {
      int64_t one[1] = {1};
      mb_init(g, mb_tensor_i64("ax0", 1, one, ax0));
      mb_init(g, mb_tensor_i64("ax1", 1, one, ax1));
      mb_node(g, "Unsqueeze", "Wu,ax0", "u1", NULL);
      mb_node(g, "Identity", "u1", "u2", NULL);
      mb_node(g, "Squeeze", "u2,ax0", "u3", NULL);
      mb_node(g, "Squeeze", "Ws,ax1", "s3", NULL);
    } else {
      n = mb_node(g, "Unsqueeze", "Wu", "u1", NULL);
      mb_attr_ints(n, "axes", 1, ax0);
      mb_node(g, "Identity", "u1", "u2", NULL);
      n = mb_node(g, "Squeeze", "u2", "u3", NULL);
      mb_attr_ints(n, "axes", 1, ax0);
      mb_node(g, "Squeeze", "Ws", "s3", NULL); /* no axes: drop all 1s */
    }
    mb_node(g, "MatMul", "X,u3", "y4", NULL);
    mb_node(g, "MatMul", "X,s3", "y5", NULL);
    n = mb_node(g, "Cast", "Wc", "c1", NULL);
    mb_attr_i(n, "to", MOPT_DT_FLOAT);
    n = mb_node(g, "Gemm", "X,c1", "y6", NULL);
    /* 3-D transpose [8,1,16] → perm (2,1,0) → [16,1,8] → squeeze → [16,8] → MatMul B */
    n = mb_node(g, "Transpose", "Wti", "ti1", NULL);
    int64_t perm3[3] = {2, 1, 0};
    mb_attr_ints(n, "perm", 3, perm3);
    if (opset == 13) mb_node(g, "Squeeze", "ti1,ax1", "ti2", NULL);
    else { n = mb_node(g, "Squeeze", "ti1", "ti2", NULL); mb_attr_ints(n, "axes", 1, ax1); }
    mb_node(g, "MatMul", "X,ti2", "y7", NULL);
    const char *outs[] = {"y1", "y2", "y3", "y4", "y5", "y6", "y7"};
    for (int i = 0; i < 7; i++) mb_output(g, outs[i], MOPT_DT_FLOAT);
    mopt_model *m;
    mopt_diag d;
    int rc = mb_load(pm, &m, &d);
    if (rc) fail_msg("%s @ %s", d.msg, d.where);
    mopt_weight *w;
    size_t cnt;
    assert_int_equal(mopt_model_weights(m, &w, &cnt), 0);
    expect(w, cnt, "Wt", "MatMul", 1, 0, 1, 1);
    expect(w, cnt, "Wr", "MatMul", 1, 1, 0, 1);
    expect(w, cnt, "Wn", "MatMul", 1, -1, -1, 1);
    expect(w, cnt, "Wu", "MatMul", 1, 1, 0, 1);
    expect(w, cnt, "Ws", "MatMul", 1, 2, 0, 1);
    expect(w, cnt, "Wc", "Gemm", 1, 1, 0, 1);
    expect(w, cnt, "Wti", "MatMul", 1, 0, 2, 1);
    expect(w, cnt, "shape_r", NULL, -1, -1, -1, 0);
    mopt_model_destroy(m);
  }
}

/* Constant nodes, If branches, Loop bodies; order and graph paths. */
static void test_subgraphs(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_model(13, 7);
  Onnx__GraphProto *g = pm->graph;
  int64_t x2[2] = {2, 8}, wd[2] = {8, 8}, sc[1] = {1};
  mb_input(g, "X", MOPT_DT_FLOAT, 2, x2);
  mb_input(g, "c", MOPT_DT_BOOL, 0, sc);
  mb_input(g, "trip", MOPT_DT_INT64, 0, sc);
  mb_init(g, mb_tensor_seq("Wmain", 2, wd, 1));
  mb_constant(g, "Wconst", mb_tensor_seq("ignored_name", 2, wd, 2));
  mb_node(g, "MatMul", "X,Wmain", "h1", NULL);
  mb_node(g, "MatMul", "h1,Wconst", "h2", NULL);
  Onnx__GraphProto *t = mb_graph_new("then"), *e = mb_graph_new("else");
  mb_init(t, mb_tensor_seq("Wthen", 2, wd, 3));
  mb_node(t, "MatMul", "h2,Wthen", "yt", NULL);
  mb_output(t, "yt", MOPT_DT_FLOAT);
  mb_constant(e, "Welse", mb_tensor_seq("x", 2, wd, 4));
  mb_node(e, "Gemm", "h2,Welse", "ye", NULL);
  mb_output(e, "ye", MOPT_DT_FLOAT);
  Onnx__NodeProto *n = mb_node(g, "If", "c", "h3", "branch");
  mb_attr_g(n, "then_branch", t);
  mb_attr_g(n, "else_branch", e);
  /* Loop body: (iter, cond, carried) → (cond, carried'); weight used from the outer scope and
   * one inside the body */
  Onnx__GraphProto *body = mb_graph_new("body");
  mb_input(body, "i", MOPT_DT_INT64, 0, sc);
  mb_input(body, "cin", MOPT_DT_BOOL, 0, sc);
  mb_input(body, "v", MOPT_DT_FLOAT, 2, x2);
  mb_init(body, mb_tensor_seq("Wloop", 2, wd, 5));
  mb_node(body, "MatMul", "v,Wloop", "v1", NULL);
  mb_node(body, "Identity", "cin", "cout", NULL);
  mb_output(body, "cout", MOPT_DT_BOOL);
  mb_output(body, "v1", MOPT_DT_FLOAT);
  n = mb_node(g, "Loop", "trip,,h3", "h4", NULL);
  mb_attr_g(n, "body", body);
  mb_output(g, "h4", MOPT_DT_FLOAT);
  mopt_model *m;
  mopt_diag d;
  int rc = mb_load(pm, &m, &d);
  if (rc) fail_msg("%s @ %s", d.msg, d.where);
  mopt_weight *w;
  size_t cnt;
  assert_int_equal(mopt_model_weights(m, &w, &cnt), 0);
  assert_int_equal(cnt, 5);
  const char *order[] = {"Wmain", "Wconst", "Wthen", "Welse", "Wloop"};
  const char *paths[] = {"main", "main", "main/branch.then_branch", "main/branch.else_branch",
                         "main/Loop_4.body"};
  const int locs[] = {MOPT_LOC_INITIALIZER, MOPT_LOC_CONSTANT, MOPT_LOC_INITIALIZER,
                      MOPT_LOC_CONSTANT, MOPT_LOC_INITIALIZER};
  for (int i = 0; i < 5; i++) {
    assert_string_equal(w[i].name, order[i]);
    assert_string_equal(w[i].graph_path, paths[i]);
    assert_int_equal(w[i].loc, locs[i]);
    assert_int_equal(w[i].index, i);
  }
  expect(w, cnt, "Wconst", "MatMul", 1, 1, 0, 1);
  expect(w, cnt, "Wthen", "MatMul", 1, 1, 0, 1);
  expect(w, cnt, "Welse", "Gemm", 1, 1, 0, 1);
  expect(w, cnt, "Wloop", "MatMul", 1, 1, 0, 1);
  float *v;
  assert_int_equal(mopt_weight_read_f32(m, &w[3], &v, &d), 0);
  float *ref = mb_values(64, 4);
  assert_memory_equal(v, ref, 64 * 4);
  free(ref);
  free(v);
  mopt_model_info info;
  mopt_model_info_get(m, &info);
  assert_int_equal(info.weight_count, 5);
  assert_int_equal(info.node_count, 10); /* 5 main + 1 then + 2 else + 2 body */
  mopt_model_destroy(m);
}

/* Non-float tensors consumed by MatMul are listed but not weights. */
static void test_non_float(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_model(13, 7);
  int64_t x2[2] = {2, 4}, wd[2] = {4, 4};
  mb_input(pm->graph, "X", MOPT_DT_INT32, 2, x2);
  int32_t v[16] = {0};
  mb_init(pm->graph, mb_tensor_raw("Wi", MOPT_DT_INT32, 2, wd, v, 64));
  mb_node(pm->graph, "MatMul", "X,Wi", "Y", NULL);
  mb_output(pm->graph, "Y", MOPT_DT_INT32);
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(mb_load(pm, &m, &d), 0);
  mopt_weight *w;
  size_t cnt;
  assert_int_equal(mopt_model_weights(m, &w, &cnt), 0);
  expect(w, cnt, "Wi", "MatMul", 1, 1, 0, 0);
  mopt_model_destroy(m);
}

/* Decoding: every numeric dtype in raw_data and in its typed field. */
static void test_decode_dtypes(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_model(21, 10);
  Onnx__GraphProto *g = pm->graph;
  int64_t d4[1] = {4}, d5[1] = {5};
  float f[4] = {1.5f, -2.25f, 0.0f, 1e-3f};
  mb_init(g, mb_tensor_raw("f32_raw", MOPT_DT_FLOAT, 1, d4, f, 16));
  double dd[4] = {1.5, -2.25, 0, 1e-3};
  mb_init(g, mb_tensor_raw("f64_raw", MOPT_DT_DOUBLE, 1, d4, dd, 32));
  uint16_t h[4] = {0x3e00, 0xc080, 0x0000, 0x1419}; /* 1.5, -2.25, 0, ~0.001 */
  mb_init(g, mb_tensor_raw("f16_raw", MOPT_DT_FLOAT16, 1, d4, h, 8));
  uint16_t bh[4] = {0x3fc0, 0xc010, 0x0000, 0x3a83};
  mb_init(g, mb_tensor_raw("bf16_raw", MOPT_DT_BFLOAT16, 1, d4, bh, 8));
  int8_t i8[4] = {-128, 127, 0, -1};
  mb_init(g, mb_tensor_raw("i8_raw", MOPT_DT_INT8, 1, d4, i8, 4));
  uint8_t u8[4] = {0, 255, 7, 128};
  mb_init(g, mb_tensor_raw("u8_raw", MOPT_DT_UINT8, 1, d4, u8, 4));
  int16_t i16[4] = {-32768, 32767, 5, -5};
  mb_init(g, mb_tensor_raw("i16_raw", MOPT_DT_INT16, 1, d4, i16, 8));
  uint16_t u16[4] = {0, 65535, 5, 1000};
  mb_init(g, mb_tensor_raw("u16_raw", MOPT_DT_UINT16, 1, d4, u16, 8));
  int32_t i32[4] = {-100000, 100000, 0, 7};
  mb_init(g, mb_tensor_raw("i32_raw", MOPT_DT_INT32, 1, d4, i32, 16));
  uint32_t u32[4] = {0, 4000000000u, 3, 9};
  mb_init(g, mb_tensor_raw("u32_raw", MOPT_DT_UINT32, 1, d4, u32, 16));
  int64_t i64[4] = {-5, 1ll << 40, 0, 3};
  mb_init(g, mb_tensor_raw("i64_raw", MOPT_DT_INT64, 1, d4, i64, 32));
  uint64_t u64[4] = {0, 1ull << 41, 2, 3};
  mb_init(g, mb_tensor_raw("u64_raw", MOPT_DT_UINT64, 1, d4, u64, 32));
  uint8_t b[4] = {1, 0, 1, 1};
  mb_init(g, mb_tensor_raw("bool_raw", MOPT_DT_BOOL, 1, d4, b, 4));
  uint8_t i4[3] = {0x8f, 0x17, 0x03}; /* -1, -8, 7, 1, 3 */
  mb_init(g, mb_tensor_raw("i4_raw", MOPT_DT_INT4, 1, d5, i4, 3));
  mb_init(g, mb_tensor_raw("u4_raw", MOPT_DT_UINT4, 1, d5, i4, 3)); /* 15, 8, 7, 1, 3 */
  /* typed fields */
  Onnx__TensorProto *t;
#define TYPED(nm, dt) (t = mb_tensor_raw(nm, dt, 1, d4, "", 0), t->has_raw_data = 0, mb_init(g, t), t)
  t = TYPED("f32_typed", MOPT_DT_FLOAT);
  t->n_float_data = 4; t->float_data = mb_alloc(16); memcpy(t->float_data, f, 16);
  t = TYPED("f64_typed", MOPT_DT_DOUBLE);
  t->n_double_data = 4; t->double_data = mb_alloc(32); memcpy(t->double_data, dd, 32);
  int32_t hv[4] = {0x3e00, 0xc080, 0, 0x1419}, i8v[4] = {-128, 127, 0, -1};
  t = TYPED("f16_typed", MOPT_DT_FLOAT16);
  t->n_int32_data = 4; t->int32_data = mb_alloc(16); memcpy(t->int32_data, hv, 16);
  t = TYPED("i8_typed", MOPT_DT_INT8);
  t->n_int32_data = 4; t->int32_data = mb_alloc(16); memcpy(t->int32_data, i8v, 16);
  t = TYPED("i64_typed", MOPT_DT_INT64);
  t->n_int64_data = 4; t->int64_data = mb_alloc(32); memcpy(t->int64_data, i64, 32);
  t = TYPED("u64_typed", MOPT_DT_UINT64);
  t->n_uint64_data = 4; t->uint64_data = mb_alloc(32); memcpy(t->uint64_data, u64, 32);
  t = mb_tensor_raw("i4_typed", MOPT_DT_INT4, 1, d5, "", 0);
  t->has_raw_data = 0;
  t->n_int32_data = 3; t->int32_data = mb_alloc(12);
  t->int32_data[0] = 0x8f; t->int32_data[1] = 0x17; t->int32_data[2] = 0x03;
  mb_init(g, t);
#undef TYPED
  mopt_model *m;
  mopt_diag d;
  int rc = mb_load(pm, &m, &d);
  if (rc) fail_msg("%s @ %s", d.msg, d.where);
  mopt_weight *w;
  size_t cnt;
  assert_int_equal(mopt_model_weights(m, &w, &cnt), 0);
  struct { const char *name; float v[5]; float tol; } exp[] = {
    {"f32_raw", {1.5f, -2.25f, 0, 1e-3f}, 0}, {"f64_raw", {1.5f, -2.25f, 0, 1e-3f}, 0},
    {"f16_raw", {1.5f, -2.25f, 0, 1e-3f}, 1e-6f}, {"bf16_raw", {1.5f, -2.25f, 0, 1e-3f}, 1e-5f},
    {"i8_raw", {-128, 127, 0, -1}, 0}, {"u8_raw", {0, 255, 7, 128}, 0},
    {"i16_raw", {-32768, 32767, 5, -5}, 0}, {"u16_raw", {0, 65535, 5, 1000}, 0},
    {"i32_raw", {-100000, 100000, 0, 7}, 0}, {"u32_raw", {0, 4e9f, 3, 9}, 0},
    {"i64_raw", {-5, 1099511627776.0f, 0, 3}, 0}, {"u64_raw", {0, 2199023255552.0f, 2, 3}, 0},
    {"bool_raw", {1, 0, 1, 1}, 0}, {"i4_raw", {-1, -8, 7, 1, 3}, 0}, {"u4_raw", {15, 8, 7, 1, 3}, 0},
    {"f32_typed", {1.5f, -2.25f, 0, 1e-3f}, 0}, {"f64_typed", {1.5f, -2.25f, 0, 1e-3f}, 0},
    {"f16_typed", {1.5f, -2.25f, 0, 1e-3f}, 1e-6f}, {"i8_typed", {-128, 127, 0, -1}, 0},
    {"i64_typed", {-5, 1099511627776.0f, 0, 3}, 0}, {"u64_typed", {0, 2199023255552.0f, 2, 3}, 0},
    {"i4_typed", {-1, -8, 7, 1, 3}, 0},
  };
  assert_int_equal(cnt, sizeof exp / sizeof exp[0]);
  for (size_t i = 0; i < cnt; i++) {
    const mopt_weight *x = find_w(w, cnt, exp[i].name);
    float *v;
    rc = mopt_weight_read_f32(m, x, &v, &d);
    if (rc) fail_msg("%s: %s", exp[i].name, d.msg);
    for (uint64_t k = 0; k < x->nelem; k++)
      if (fabsf(v[k] - exp[i].v[k]) > exp[i].tol)
        fail_msg("%s[%llu] = %g, expected %g", exp[i].name, (unsigned long long)k, v[k], exp[i].v[k]);
    free(v);
  }
  /* a weight pointer from another model is refused */
  mopt_weight fake = w[0];
  float *v;
  assert_int_equal(mopt_weight_read_f32(m, &fake, &v, &d), MOPT_EINVAL);
  mopt_model_destroy(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_mlp),
    cmocka_unit_test(test_consumers),
    cmocka_unit_test(test_layout_ops),
    cmocka_unit_test(test_subgraphs),
    cmocka_unit_test(test_non_float),
    cmocka_unit_test(test_decode_dtypes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
