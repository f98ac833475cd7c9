/* Tests core/payload.c and core/manifest.c: byte-exact round trips of full and delta payloads on
 * many version pairs of small ONNX models built here with the protobuf-c structs (float32,
 * float16, int8, int64, Constant-node weights, typed fields), rejection of every single-byte
 * flip and every truncation of small payloads with nothing written, wrong-base refusal naming
 * the digest, and ed25519 manifest verification including tampering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <dirent.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ktest.h"
#include "mopt.h"
#include "onnx.pb-c.h"
#include "payload.h"
#include "payload_int.h"

static char dir[256];

static void path_of(char *out, const char *name) { snprintf(out, 512, "%s/%s", dir, name); }

static void write_file(const char *name, const uint8_t *b, size_t n) {
  char p[512];
  path_of(p, name);
  FILE *f = fopen(p, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  fclose(f);
}
static uint8_t *read_all(const char *name, size_t *n) {
  char p[512];
  path_of(p, name);
  return kt_read_file(p, n);
}
static int exists(const char *name) {
  char p[512];
  path_of(p, name);
  return access(p, F_OK) == 0;
}
static int count_dir(void) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* ---- model builder: a list of tensors become initializers or Constant nodes ---- */
typedef struct tdef {
  const char *name;
  int32_t dtype;
  int ndim;
  int64_t dims[4];
  int constant;       /* 1 = value of a Constant node, 2 = initializer of an If's subgraphs,
                         0 = initializer */
  int typed;          /* 1 = float_data typed field (float32 only) */
  uint64_t seed;
  double noise;       /* relative noise added to the seeded values (fine-tune) */
  int bump;           /* int dtypes: add this to every 7th element */
} tdef;

/* When set, tensor_data adds noise in value space (as training updates do), this times the
 * values' scale, on top of tdef.noise (which is relative to each value). */
static double g_shift;

static size_t dt_size(int32_t dt) {
  switch (dt) {
  case MOPT_DT_FLOAT: return 4;
  case MOPT_DT_FLOAT16: return 2;
  case MOPT_DT_INT64: return 8;
  default: return 1;
  }
}

static uint64_t rng(uint64_t *s) {
  *s += 0x9E3779B97F4A7C15ull;
  uint64_t z = *s;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double unitf(uint64_t *s) { return (double)(rng(s) >> 11) / 9007199254740992.0; }

/* Fills the tensor's data (malloc'd) deterministically from seed; noise perturbs floats. */
static uint8_t *tensor_data(const tdef *t, size_t *len) {
  size_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= (size_t)t->dims[i];
  *len = n * dt_size(t->dtype);
  uint8_t *b = malloc(*len ? *len : 1);
  uint64_t s = t->seed, s2 = t->seed ^ 0xabcdefull;
  for (size_t i = 0; i < n; i++) {
    double v = (unitf(&s) - 0.5) * 0.2;
    if (t->noise != 0) v *= 1.0 + t->noise * (unitf(&s2) - 0.5);
    if (g_shift != 0) v += g_shift * 0.2 * (unitf(&s2) - 0.5);
    if (t->dtype == MOPT_DT_FLOAT) { float f = (float)v; memcpy(b + 4 * i, &f, 4); }
    else if (t->dtype == MOPT_DT_FLOAT16) { uint16_t h = mopt_f32_to_f16((float)v); memcpy(b + 2 * i, &h, 2); }
    else if (t->dtype == MOPT_DT_INT64) { int64_t q = (int64_t)(v * 1000) + (i % 7 == 0 ? t->bump : 0); memcpy(b + 8 * i, &q, 8); }
    else { int8_t q = (int8_t)(int)(v * 600) ; if (i % 7 == 0) q = (int8_t)(q + t->bump); b[i] = (uint8_t)q; }
  }
  return b;
}

/* Serializes a model holding the tensors; returns malloc'd bytes. */
static uint8_t *build_model(const tdef *ts, size_t n, const char *producer, size_t *len) {
  Onnx__ModelProto model;
  Onnx__GraphProto graph;
  Onnx__OperatorSetIdProto opset, *opsets[1] = {&opset};
  onnx__model_proto__init(&model);
  onnx__graph_proto__init(&graph);
  onnx__operator_set_id_proto__init(&opset);
  opset.domain = ""; opset.has_version = 1; opset.version = 13;
  model.has_ir_version = 1; model.ir_version = 7;
  model.n_opset_import = 1; model.opset_import = opsets;
  model.producer_name = (char *)producer;
  model.graph = &graph;
  graph.name = "g";
  Onnx__TensorProto *tp = calloc(n, sizeof *tp), **inits = calloc(n, sizeof *inits);
  Onnx__NodeProto *np = calloc(n, sizeof *np), **nodes = calloc(n + 1, sizeof *nodes);
  Onnx__AttributeProto *ap = calloc(n, sizeof *ap), **attrs = calloc(n, sizeof *attrs);
  Onnx__ValueInfoProto *vo = calloc(n + 1, sizeof *vo), **outs = calloc(n + 1, sizeof *outs);
  char **outnames = calloc(n, sizeof *outnames);
  uint8_t **datas = calloc(n, sizeof *datas);
  size_t ni = 0, nn = 0, nsub = 0, nout = 0;
  Onnx__TensorProto **sub_inits = calloc(n, sizeof *sub_inits);
  Onnx__GraphProto sub;
  Onnx__ValueInfoProto sub_out, *sub_outs[1] = {&sub_out}, cond_in, *ins[1] = {&cond_in};
  Onnx__NodeProto ifn, *ifn_p = &ifn;
  Onnx__AttributeProto at_then, at_else, *if_attrs[2] = {&at_then, &at_else};
  char *if_in[1] = {"cond"}, *if_out[1] = {"if_out"};
  for (size_t i = 0; i < n; i++) {
    const tdef *t = &ts[i];
    Onnx__TensorProto *x = &tp[i];
    onnx__tensor_proto__init(x);
    x->name = (char *)t->name;
    x->has_data_type = 1; x->data_type = t->dtype;
    x->n_dims = (size_t)t->ndim; x->dims = (int64_t *)t->dims;
    size_t dl;
    datas[i] = tensor_data(t, &dl);
    if (t->typed) { x->n_float_data = dl / 4; x->float_data = (float *)datas[i]; }
    else { x->has_raw_data = 1; x->raw_data.data = datas[i]; x->raw_data.len = dl; }
    if (t->constant) {
      onnx__node_proto__init(&np[nn]);
      onnx__attribute_proto__init(&ap[nn]);
      ap[nn].name = "value"; ap[nn].has_type = 1; ap[nn].type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
      ap[nn].t = x;
      attrs[nn] = &ap[nn];
      np[nn].op_type = "Constant"; np[nn].n_attribute = 1; np[nn].attribute = &attrs[nn];
      outnames[i] = (char *)t->name;
      np[nn].n_output = 1; np[nn].output = &outnames[i];
      nodes[nn] = &np[nn];
      nn++;
    } else if (t->constant == 2) {
      sub_inits[nsub++] = x;
      continue;
    } else {
      inits[ni++] = x;
    }
    onnx__value_info_proto__init(&vo[nout]);
    vo[nout].name = (char *)t->name;
    outs[nout] = &vo[nout];
    nout++;
  }
  if (nsub) {   /* If(cond) with both branches returning the first subgraph tensor */
    onnx__graph_proto__init(&sub);
    sub.name = "branch";
    sub.n_initializer = nsub; sub.initializer = sub_inits;
    onnx__value_info_proto__init(&sub_out);
    sub_out.name = sub_inits[0]->name;
    sub.n_output = 1; sub.output = sub_outs;
    onnx__attribute_proto__init(&at_then);
    at_then.name = "then_branch"; at_then.has_type = 1; at_then.type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH; at_then.g = &sub;
    at_else = at_then;
    at_else.name = "else_branch";
    onnx__node_proto__init(&ifn);
    ifn.op_type = "If"; ifn.n_input = 1; ifn.input = if_in; ifn.n_output = 1; ifn.output = if_out;
    ifn.n_attribute = 2; ifn.attribute = if_attrs;
    nodes[nn++] = ifn_p;
    onnx__value_info_proto__init(&cond_in);
    cond_in.name = "cond";
    graph.n_input = 1; graph.input = ins;
    onnx__value_info_proto__init(&vo[nout]);
    vo[nout].name = "if_out";
    outs[nout] = &vo[nout];
    nout++;
  }
  graph.n_initializer = ni; graph.initializer = inits;
  graph.n_node = nn; graph.node = nodes;
  graph.n_output = nout; graph.output = outs;
  *len = onnx__model_proto__get_packed_size(&model);
  uint8_t *buf = malloc(*len);
  onnx__model_proto__pack(&model, buf);
  for (size_t i = 0; i < n; i++) free(datas[i]);
  free(datas); free(tp); free(inits); free(np); free(nodes); free(ap); free(attrs); free(vo);
  free(outs); free(outnames); free(sub_inits);
  return buf;
}

static void write_model(const char *name, const tdef *ts, size_t n, const char *producer) {
  size_t len;
  uint8_t *b = build_model(ts, n, producer, &len);
  write_file(name, b, len);
  free(b);
}

static void assert_same_files(const char *a, const char *b) {
  size_t la, lb;
  uint8_t *x = read_all(a, &la), *y = read_all(b, &lb);
  assert_non_null(x); assert_non_null(y);
  assert_int_equal(la, lb);
  assert_memory_equal(x, y, la);
  free(x); free(y);
}

/* delta OLD→NEW, apply, byte-compare; also checks delta ≤ full. Returns the delta size. */
static uint64_t roundtrip_pair(const char *old, const char *new_, const mopt_payload_opts *o,
                               int expect_tensors) {
  char po[512], pn[512], pd[512], pf[512], pr[512], pu[512];
  path_of(po, old); path_of(pn, new_); path_of(pd, "pair.delta"); path_of(pf, "pair.full");
  path_of(pr, "pair.out"); path_of(pu, "pair.unpacked");
  mopt_diag d;
  mopt_payload_info di, fi, ai;
  int rc = mopt_payload_delta_file(po, pn, pd, o, &di, &d);
  if (rc) fail_msg("delta %s -> %s: %s (%s)", old, new_, d.msg, d.where);
  rc = mopt_payload_pack_file(pn, pf, o, &fi, &d);
  if (rc) fail_msg("pack %s: %s (%s)", new_, d.msg, d.where);
  if (expect_tensors) assert_true(di.n_tensors > 0);
  if (di.payload_size > fi.payload_size)
    fail_msg("delta %s -> %s is %llu bytes, full is %llu", old, new_,
             (unsigned long long)di.payload_size, (unsigned long long)fi.payload_size);
  unlink(pr);
  rc = mopt_payload_apply_file(po, pd, pr, &ai, &d);
  if (rc) fail_msg("apply %s -> %s: %s (%s)", old, new_, d.msg, d.where);
  assert_same_files("pair.out", new_);
  assert_string_equal(ai.target_sha256, di.target_sha256);
  unlink(pu);
  rc = mopt_payload_unpack_file(pf, pu, NULL, &d);
  if (rc) fail_msg("unpack %s: %s (%s)", new_, d.msg, d.where);
  assert_same_files("pair.unpacked", new_);
  return di.payload_size;
}

#define N_BASE 6
static void base_defs(tdef *t) {
  tdef v[N_BASE] = {
    {"fc1.weight", MOPT_DT_FLOAT, 2, {64, 48}, 0, 0, 11, 0, 0},
    {"fc1.bias", MOPT_DT_FLOAT, 1, {48}, 0, 0, 12, 0, 0},
    {"fc2.weight", MOPT_DT_FLOAT, 2, {48, 40}, 0, 0, 13, 0, 0},
    {"fc2.bias", MOPT_DT_FLOAT, 1, {40}, 0, 0, 14, 0, 0},
    {"const_w", MOPT_DT_FLOAT, 2, {16, 16}, 1, 0, 15, 0, 0},
    {"typed_b", MOPT_DT_FLOAT, 1, {24}, 0, 1, 16, 0, 0},
  };
  memcpy(t, v, sizeof v);
}

static void test_full_roundtrips(void **state) {
  (void)state;
  tdef t[N_BASE];
  base_defs(t);
  write_model("f32.onnx", t, N_BASE, "test");
  tdef h[3] = {{"h.w", MOPT_DT_FLOAT16, 2, {40, 30}, 0, 0, 3, 0, 0},
               {"h.b", MOPT_DT_FLOAT16, 1, {30}, 1, 0, 4, 0, 0},
               {"q.w", MOPT_DT_INT8, 2, {50, 20}, 0, 0, 5, 0, 0}};
  write_model("mixed.onnx", h, 3, "test");
  tdef l[1] = {{"ids", MOPT_DT_INT64, 1, {300}, 0, 0, 6, 0, 0}};
  write_model("i64.onnx", l, 1, "test");
  const char *names[] = {"f32.onnx", "mixed.onnx", "i64.onnx"};
  for (int i = 0; i < 3; i++) {
    char pm[512], pp[512], pu[512];
    path_of(pm, names[i]); path_of(pp, "x.full"); path_of(pu, "x.out");
    mopt_payload_info in;
    mopt_diag d;
    assert_int_equal(mopt_payload_pack_file(pm, pp, NULL, &in, &d), 0);
    assert_int_equal(in.kind, MOPT_PAYLOAD_FULL);
    assert_true(in.n_tensors >= 1);
    mopt_payload_info hi;
    assert_int_equal(mopt_payload_info_file(pp, &hi, &d), 0);
    assert_int_equal(hi.payload_size, in.payload_size);
    assert_string_equal(hi.target_sha256, in.target_sha256);
    assert_int_equal(mopt_payload_unpack_file(pp, pu, NULL, &d), 0);
    assert_same_files("x.out", names[i]);
  }
  /* small chunks: tensors span several chunk records */
  mopt_payload_opts o = {.level = 3, .chunk_bytes = 1024};
  char pm[512], pp[512], pu[512];
  path_of(pm, "f32.onnx"); path_of(pp, "x.full"); path_of(pu, "x.out");
  mopt_payload_info in;
  assert_int_equal(mopt_payload_pack_file(pm, pp, &o, &in, NULL), 0);
  assert_true(in.n_records > 20);
  assert_int_equal(mopt_payload_unpack_file(pp, pu, NULL, NULL), 0);
  assert_same_files("x.out", "f32.onnx");
  /* not an ONNX file: opaque bytes still round-trip */
  uint8_t junk[5000];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * i % 251);
  write_file("junk.bin", junk, sizeof junk);
  path_of(pm, "junk.bin");
  assert_int_equal(mopt_payload_pack_file(pm, pp, NULL, &in, NULL), 0);
  assert_int_equal(in.n_tensors, 0);
  assert_int_equal(mopt_payload_unpack_file(pp, pu, NULL, NULL), 0);
  assert_same_files("x.out", "junk.bin");
  /* empty file */
  write_file("empty.bin", junk, 0);
  path_of(pm, "empty.bin");
  assert_int_equal(mopt_payload_pack_file(pm, pp, NULL, &in, NULL), 0);
  assert_int_equal(mopt_payload_unpack_file(pp, pu, NULL, NULL), 0);
  assert_same_files("x.out", "empty.bin");
}

static void test_delta_pairs(void **state) {
  (void)state;
  tdef a[N_BASE], b[N_BASE + 2];
  base_defs(a);
  write_model("v1.onnx", a, N_BASE, "test");

  /* identical files: every chunk SAME, tiny payload */
  mopt_diag d;
  mopt_payload_info di;
  char p1[512], pd[512];
  path_of(p1, "v1.onnx"); path_of(pd, "same.delta");
  assert_int_equal(mopt_payload_delta_file(p1, p1, pd, NULL, &di, &d), 0);
  assert_int_equal(di.bytes_raw + di.bytes_xor + di.bytes_sub, 0);
  assert_true(di.bytes_same > 0);
  assert_true(di.payload_size < 1000);
  roundtrip_pair("v1.onnx", "v1.onnx", NULL, 1);

  /* every weight moves a little (fine-tune) */
  base_defs(b);
  for (int i = 0; i < N_BASE; i++) b[i].noise = 1e-3;
  write_model("v2.onnx", b, N_BASE, "test");
  uint64_t ds = roundtrip_pair("v1.onnx", "v2.onnx", NULL, 1);
  assert_int_equal(mopt_payload_delta_file(p1, p1, pd, NULL, &di, &d), 0);

  /* only the head changed */
  base_defs(b);
  b[2].seed = 99; b[3].noise = 0.01;
  write_model("v3.onnx", b, N_BASE, "test");
  path_of(pd, "head.delta");
  char p3[512];
  path_of(p3, "v3.onnx");
  assert_int_equal(mopt_payload_delta_file(p1, p3, pd, NULL, &di, &d), 0);
  assert_true(di.bytes_same >= (64 * 48 + 48) * 4);
  assert_true(di.payload_size < ds);
  roundtrip_pair("v1.onnx", "v3.onnx", NULL, 1);

  /* tensors added and removed, producer string changed */
  base_defs(b);
  b[1] = (tdef){"fc1.extra", MOPT_DT_FLOAT, 1, {100}, 0, 0, 21, 0, 0};
  b[N_BASE] = (tdef){"new.weight", MOPT_DT_FLOAT, 2, {20, 20}, 0, 0, 22, 0, 0};
  write_model("v4.onnx", b, N_BASE + 1, "test-2");
  roundtrip_pair("v1.onnx", "v4.onnx", NULL, 1);
  roundtrip_pair("v4.onnx", "v1.onnx", NULL, 1);

  /* dtype and shape changes */
  base_defs(b);
  b[0].dtype = MOPT_DT_FLOAT16;
  b[2].dims[0] = 40; b[2].dims[1] = 48;   /* same size, different shape */
  b[3].dims[0] = 44;
  write_model("v5.onnx", b, N_BASE, "test");
  roundtrip_pair("v1.onnx", "v5.onnx", NULL, 1);

  /* Constant-node weight changed only */
  base_defs(b);
  b[4].noise = 0.05;
  write_model("v6.onnx", b, N_BASE, "test");
  roundtrip_pair("v1.onnx", "v6.onnx", NULL, 1);

  /* weights inside If subgraphs: one changes, one is added */
  tdef g1[3] = {{"top.w", MOPT_DT_FLOAT, 2, {32, 32}, 0, 0, 51, 0, 0},
                {"sub.w", MOPT_DT_FLOAT, 2, {24, 24}, 2, 0, 52, 0, 0},
                {"sub.k", MOPT_DT_FLOAT, 1, {300}, 2, 0, 53, 0, 0}};
  write_model("g1.onnx", g1, 3, "test");
  g1[1].noise = 1e-3;
  write_model("g2.onnx", g1, 3, "test");
  tdef g3[4] = {g1[0], g1[1], g1[2], {"sub.extra", MOPT_DT_FLOAT16, 1, {128}, 2, 0, 54, 0, 0}};
  write_model("g3.onnx", g3, 4, "test");
  roundtrip_pair("g1.onnx", "g2.onnx", NULL, 1);
  roundtrip_pair("g2.onnx", "g3.onnx", NULL, 1);
  char pg1[512], pg2[512];
  path_of(pg1, "g1.onnx"); path_of(pg2, "g2.onnx"); path_of(pd, "g.delta");
  assert_int_equal(mopt_payload_delta_file(pg1, pg2, pd, NULL, &di, &d), 0);
  assert_int_equal(di.n_tensors, 3);      /* the scan saw the subgraph tensors */
  assert_int_equal(di.n_matched, 3);
  assert_true(di.bytes_same >= (32 * 32 + 300) * 4);

  /* unrelated model */
  tdef u[2] = {{"conv.w", MOPT_DT_FLOAT, 4, {8, 4, 3, 3}, 0, 0, 77, 0, 0},
               {"emb", MOPT_DT_INT64, 2, {30, 4}, 0, 0, 78, 0, 0}};
  write_model("u.onnx", u, 2, "other");
  roundtrip_pair("v1.onnx", "u.onnx", NULL, 1);
  roundtrip_pair("u.onnx", "v1.onnx", NULL, 1);

  /* int8 and float16 models with small changes; small chunks */
  tdef q1[2] = {{"q.w", MOPT_DT_INT8, 2, {64, 64}, 0, 0, 31, 0, 0},
                {"h.w", MOPT_DT_FLOAT16, 2, {32, 64}, 0, 0, 32, 0, 0}};
  tdef q2[2] = {{"q.w", MOPT_DT_INT8, 2, {64, 64}, 0, 0, 31, 0, 1},
                {"h.w", MOPT_DT_FLOAT16, 2, {32, 64}, 0, 0, 32, 1e-2, 0}};
  write_model("q1.onnx", q1, 2, "test");
  write_model("q2.onnx", q2, 2, "test");
  roundtrip_pair("q1.onnx", "q2.onnx", NULL, 1);
  mopt_payload_opts o = {.level = 5, .chunk_bytes = 512};
  roundtrip_pair("q1.onnx", "q2.onnx", &o, 1);
  tdef l1[1] = {{"ids", MOPT_DT_INT64, 1, {500}, 0, 0, 41, 0, 0}};
  tdef l2[1] = {{"ids", MOPT_DT_INT64, 1, {500}, 0, 0, 41, 0, 3}};
  write_model("l1.onnx", l1, 1, "test");
  write_model("l2.onnx", l2, 1, "test");
  roundtrip_pair("l1.onnx", "l2.onnx", NULL, 1);
  char pl1[512], pl2[512];
  path_of(pl1, "l1.onnx"); path_of(pl2, "l2.onnx"); path_of(pd, "l.delta");
  assert_int_equal(mopt_payload_delta_file(pl1, pl2, pd, NULL, &di, &d), 0);
  assert_true(di.bytes_sub + di.bytes_xor > 0);   /* a difference, not a raw copy */
}

/* Every single-byte flip and every truncation must be rejected and leave nothing behind. */
static void flips_and_truncations(const char *payload, const char *base) {
  size_t n;
  uint8_t *p = read_all(payload, &n);
  assert_non_null(p);
  char pb[512], pp[512], po[512];
  path_of(pp, "mut.pay"); path_of(po, "mut.out");
  if (base) path_of(pb, base);
  unlink(po);
  unlink(pp);
  int files = count_dir() + 1;   /* + mut.pay */
  for (size_t i = 0; i < n; i++) {
    for (int k = 0; k < 2; k++) {
      uint8_t save = p[i];
      p[i] ^= k ? 0xff : 0x01;
      write_file("mut.pay", p, n);
      p[i] = save;
      mopt_diag d;
      int rc = mopt_payload_apply_file(base ? pb : NULL, pp, po, NULL, &d);
      if (rc == 0) fail_msg("flip of byte %zu (xor %d) accepted", i, k ? 0xff : 1);
      assert_false(exists("mut.out"));
    }
  }
  for (size_t l = 0; l < n; l++) {
    write_file("mut.pay", p, l);
    int rc = mopt_payload_apply_file(base ? pb : NULL, pp, po, NULL, NULL);
    if (rc == 0) fail_msg("truncation to %zu bytes accepted", l);
    assert_false(exists("mut.out"));
  }
  assert_int_equal(count_dir(), files);   /* no temp files left */
  /* the intact payload still applies */
  write_file("mut.pay", p, n);
  assert_int_equal(mopt_payload_apply_file(base ? pb : NULL, pp, po, NULL, NULL), 0);
  unlink(po);
  free(p);
}

static void test_flips_and_truncations(void **state) {
  (void)state;
  tdef a[2] = {{"w", MOPT_DT_FLOAT, 2, {8, 8}, 0, 0, 1, 0, 0},
               {"c", MOPT_DT_INT8, 1, {96}, 1, 0, 2, 0, 0}};
  tdef b[2] = {{"w", MOPT_DT_FLOAT, 2, {8, 8}, 0, 0, 1, 1e-3, 0},
               {"c", MOPT_DT_INT8, 1, {96}, 1, 0, 2, 0, 2}};
  write_model("s1.onnx", a, 2, "t");
  write_model("s2.onnx", b, 2, "t");
  char p1[512], p2[512], pd[512], pf[512];
  path_of(p1, "s1.onnx"); path_of(p2, "s2.onnx"); path_of(pd, "s.delta"); path_of(pf, "s.full");
  mopt_payload_info in;
  assert_int_equal(mopt_payload_delta_file(p1, p2, pd, NULL, &in, NULL), 0);
  assert_true(in.n_tensors == 2 && in.payload_size < 2000);
  flips_and_truncations("s.delta", "s1.onnx");
  assert_int_equal(mopt_payload_pack_file(p2, pf, NULL, &in, NULL), 0);
  assert_true(in.payload_size < 2000);
  flips_and_truncations("s.full", NULL);
}

/* v1 and v2 of one float32 tensor of the given dims, v2 = v1 + value-space noise; returns the
 * delta's info (written to delta_name, level 19). */
static mopt_payload_info shifted_pair(const char *v1, const char *v2, const char *delta_name,
                                      int64_t rows, int64_t cols) {
  tdef t[1] = {{"w", MOPT_DT_FLOAT, 2, {rows, cols}, 0, 0, 5, 0, 0}};
  write_model(v1, t, 1, "t");
  g_shift = 1e-3;
  write_model(v2, t, 1, "t");
  g_shift = 0;
  char p1[512], p2[512], pd[512];
  path_of(p1, v1); path_of(p2, v2); path_of(pd, delta_name);
  mopt_payload_info in;
  mopt_payload_opts o = {.level = 19};
  assert_int_equal(mopt_payload_delta_file(p1, p2, pd, &o, &in, NULL), 0);
  return in;
}

/* Small value-space noise on float32 weights (as training leaves): every chunk's differences
 * are stored grouped by the base's exponent (SUBE), the pair round-trips byte-exact, and every
 * flip or truncation of such a payload is refused. */
static void test_exponent_grouped_differences(void **state) {
  (void)state;
  mopt_payload_info in = shifted_pair("e1.onnx", "e2.onnx", "e.delta", 256, 256);
  assert_int_equal(in.bytes_sube, 256 * 256 * 4);
  mopt_payload_opts o = {.level = 19};
  roundtrip_pair("e1.onnx", "e2.onnx", &o, 1);
  in = shifted_pair("f1.onnx", "f2.onnx", "f.delta", 16, 32);   /* small enough to flip */
  assert_true(in.bytes_sube > 0);
  flips_and_truncations("f.delta", "f1.onnx");
}

static void test_wrong_base(void **state) {
  (void)state;
  tdef a[1] = {{"w", MOPT_DT_FLOAT, 1, {100}, 0, 0, 1, 0, 0}};
  tdef b[1] = {{"w", MOPT_DT_FLOAT, 1, {100}, 0, 0, 1, 1e-2, 0}};
  tdef c[1] = {{"w", MOPT_DT_FLOAT, 1, {100}, 0, 0, 5, 0, 0}};
  write_model("wb1.onnx", a, 1, "t");
  write_model("wb2.onnx", b, 1, "t");
  write_model("wb3.onnx", c, 1, "t");   /* same size as wb1, different bytes */
  char p1[512], p2[512], p3[512], pd[512], po[512];
  path_of(p1, "wb1.onnx"); path_of(p2, "wb2.onnx"); path_of(p3, "wb3.onnx");
  path_of(pd, "wb.delta"); path_of(po, "wb.out");
  mopt_payload_info in;
  assert_int_equal(mopt_payload_delta_file(p1, p2, pd, NULL, &in, NULL), 0);
  mopt_diag d;
  unlink(po);
  assert_int_equal(mopt_payload_apply_file(p3, pd, po, NULL, &d), MOPT_EDIGEST);
  assert_non_null(strstr(d.msg, in.base_sha256));
  assert_false(exists("wb.out"));
  /* a base of another size is refused too, naming the digest */
  char pf[512];
  path_of(pf, "f32.onnx");
  assert_int_equal(mopt_payload_apply_file(pf, pd, po, NULL, &d), MOPT_EDIGEST);
  assert_non_null(strstr(d.msg, in.base_sha256));
  /* a delta without a base names it as well */
  assert_int_equal(mopt_payload_unpack_file(pd, po, NULL, &d), MOPT_EINVAL);
  assert_non_null(strstr(d.msg, in.base_sha256));
  assert_false(exists("wb.out"));
  /* an existing output is left untouched on failure */
  write_file("wb.out", (const uint8_t *)"keep", 4);
  assert_int_equal(mopt_payload_apply_file(p3, pd, po, NULL, &d), MOPT_EDIGEST);
  size_t kl;
  uint8_t *k = read_all("wb.out", &kl);
  assert_int_equal(kl, 4);
  assert_memory_equal(k, "keep", 4);
  free(k);
  assert_int_equal(mopt_payload_apply_file(p1, pd, po, NULL, &d), 0);
  assert_same_files("wb.out", "wb2.onnx");
}

static void test_manifest(void **state) {
  (void)state;
  assert_true(sodium_init() >= 0);
  uint8_t pk[32], sk[64], pk2[32], sk2[64];
  crypto_sign_keypair(pk, sk);
  crypto_sign_keypair(pk2, sk2);
  const char *signed_text =
      "{\"channel\":\"stable\",\"expires\":\"2026-12-01T00:00:00.000Z\",\"name\":\"kws\","
      "\"payloads\":[{\"kind\":\"full\",\"size\":123}],\"version\":7}";
  char sig[89], sig2[89], kid[65], kid2[65];
  assert_int_equal(mopt_manifest_sign((const uint8_t *)signed_text, strlen(signed_text), sk, sig), 0);
  assert_int_equal(mopt_manifest_sign((const uint8_t *)signed_text, strlen(signed_text), sk2, sig2), 0);
  mopt_manifest_keyid(pk, kid);
  mopt_manifest_keyid(pk2, kid2);
  char man[2048];
  snprintf(man, sizeof man, "{\"signatures\": [{\"keyid\":\"%s\",\"sig\":\"%s\"}, {\"keyid\":\"%s\",\"sig\":\"%s\"}],\n"
           " \"signed\":%s}\n", kid2, sig2, kid, sig, signed_text);
  size_t so, sl;
  mopt_diag d;
  assert_int_equal(mopt_manifest_verify((const uint8_t *)man, strlen(man), pk, &so, &sl, &d), 0);
  assert_int_equal(sl, strlen(signed_text));
  assert_memory_equal(man + so, signed_text, sl);
  assert_int_equal(mopt_manifest_verify((const uint8_t *)man, strlen(man), pk2, NULL, NULL, &d), 0);
  /* a third key has no entry */
  uint8_t pk3[32], sk3[64];
  crypto_sign_keypair(pk3, sk3);
  assert_int_equal(mopt_manifest_verify((const uint8_t *)man, strlen(man), pk3, NULL, NULL, &d), MOPT_ESIGNATURE);
  /* tampering: every byte of the signed value changed in turn fails */
  size_t len = strlen(man);
  for (size_t i = so; i < so + sl; i++) {
    char save = man[i];
    man[i] = save == '7' ? '8' : save == '"' ? '\'' : (char)(save ^ 0x20);
    int rc = mopt_manifest_verify((const uint8_t *)man, len, pk, NULL, NULL, &d);
    if (rc == 0) fail_msg("tampered byte %zu accepted", i);
    man[i] = save;
  }
  /* a tampered signature fails */
  char *sp = strstr(man, sig);
  sp[10] = sp[10] == 'A' ? 'B' : 'A';
  assert_int_equal(mopt_manifest_verify((const uint8_t *)man, len, pk, NULL, NULL, &d), MOPT_ESIGNATURE);
  /* malformed manifests */
  const char *bad[] = {"", "[]", "{\"signed\":{}}", "{\"signed\":{},\"signatures\":[]} x",
                       "{\"signed\":1,\"signatures\":[]}", "{\"signed\":{\"a\":},\"signatures\":[]}"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_int_equal(mopt_manifest_verify((const uint8_t *)bad[i], strlen(bad[i]), pk, NULL, NULL, &d), MOPT_EJSON);
  /* key file forms */
  uint8_t got[32];
  char hex[65], b64[64], js[160];
  sodium_bin2hex(hex, sizeof hex, pk, 32);
  sodium_bin2base64(b64, sizeof b64, pk, 32, sodium_base64_VARIANT_ORIGINAL);
  snprintf(js, sizeof js, "{\"keyid\":\"%s\", \"public_key\": \"%s\"}\n", kid, b64);
  const char *forms[] = {hex, b64, js};
  for (int i = 0; i < 3; i++) {
    memset(got, 0, 32);
    assert_int_equal(mopt_manifest_parse_key((const uint8_t *)forms[i], strlen(forms[i]), got, &d), 0);
    assert_memory_equal(got, pk, 32);
  }
  assert_int_equal(mopt_manifest_parse_key(pk, 32, got, &d), 0);
  assert_memory_equal(got, pk, 32);
  assert_int_equal(mopt_manifest_parse_key((const uint8_t *)"nope", 4, got, &d), MOPT_EINVAL);
}

/* The SHA-NI path must give libsodium's digests for every length and split point. */
static void test_sha_paths_agree(void **state) {
  (void)state;
  assert_true(sodium_init() >= 0);
  size_t cap = 3 << 20;
  uint8_t *b = malloc(cap);
  uint64_t s = 5;
  for (size_t i = 0; i < cap; i++) b[i] = (uint8_t)rng(&s);
  size_t lens[] = {0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 65537, 3 << 20};
  for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
    size_t len = lens[li];
    uint8_t ref[32];
    crypto_hash_sha256(ref, b, len);
    for (size_t split = 0; split <= len; split += len / 5 + 1) {
      for (int ni = 0; ni < 2; ni++) {
        mopt_sha c;
        uint8_t got[32];
        mopt_sha_init(&c, ni);
        mopt_sha_update(&c, b, split);
        mopt_sha_update(&c, b + split, 1 < len - split ? 1 : len - split);
        if (len - split > 1) mopt_sha_update(&c, b + split + 1, len - split - 1);
        mopt_sha_final(&c, got);
        assert_memory_equal(got, ref, 32);
      }
    }
  }
  free(b);
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/mopt-payload-test-XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}
static int teardown(void **state) {
  (void)state;
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[512];
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    path_of(p, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(dir);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_full_roundtrips),
    cmocka_unit_test(test_delta_pairs),
    cmocka_unit_test(test_flips_and_truncations),
    cmocka_unit_test(test_exponent_grouped_differences),
    cmocka_unit_test(test_wrong_base),
    cmocka_unit_test(test_manifest),
    cmocka_unit_test(test_sha_paths_agree),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
