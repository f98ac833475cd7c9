/* Tests core/scan.c: the streaming validator the daemon runs on every upload.
 * Models are built here with the protobuf-c structs generated from onnx.proto, so every case
 * breaks exactly one thing in an otherwise valid model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mopt.h"
#include "onnx.pb-c.h"

/* ---- a tiny model builder: X[1,K] · W[K,N] + B → Y, weights in initializers ---- */
typedef struct built {
  Onnx__ModelProto model;
  Onnx__GraphProto graph;
  Onnx__OperatorSetIdProto opset, *opsets[1];
  Onnx__NodeProto n_mm, n_add, *nodes[2];
  char *mm_in[2], *mm_out[1], *add_in[2], *add_out[1];
  Onnx__TensorProto w, b, *inits[2];
  int64_t w_dims[2], b_dims[1];
  float w_data[64 * 32], b_data[32];
  Onnx__ValueInfoProto vi_x, vi_y, *ins[1], *outs[1];
} built;

static void build(built *m) {
  memset(m, 0, sizeof *m);
  onnx__model_proto__init(&m->model);
  onnx__graph_proto__init(&m->graph);
  onnx__operator_set_id_proto__init(&m->opset);
  m->opset.domain = "";
  m->opset.has_version = 1; m->opset.version = 13;
  m->opsets[0] = &m->opset;
  m->model.has_ir_version = 1; m->model.ir_version = 7;
  m->model.n_opset_import = 1; m->model.opset_import = m->opsets;
  m->model.graph = &m->graph;
  m->graph.name = "g";

  onnx__node_proto__init(&m->n_mm);
  m->mm_in[0] = "X"; m->mm_in[1] = "W"; m->mm_out[0] = "XW";
  m->n_mm.n_input = 2; m->n_mm.input = m->mm_in; m->n_mm.n_output = 1; m->n_mm.output = m->mm_out;
  m->n_mm.op_type = "MatMul"; m->n_mm.name = "mm";
  onnx__node_proto__init(&m->n_add);
  m->add_in[0] = "XW"; m->add_in[1] = "B"; m->add_out[0] = "Y";
  m->n_add.n_input = 2; m->n_add.input = m->add_in; m->n_add.n_output = 1; m->n_add.output = m->add_out;
  m->n_add.op_type = "Add"; m->n_add.name = "add";
  m->nodes[0] = &m->n_mm; m->nodes[1] = &m->n_add;
  m->graph.n_node = 2; m->graph.node = m->nodes;

  onnx__tensor_proto__init(&m->w);
  m->w.name = "W"; m->w.has_data_type = 1; m->w.data_type = MOPT_DT_FLOAT;
  m->w_dims[0] = 64; m->w_dims[1] = 32;
  m->w.n_dims = 2; m->w.dims = m->w_dims;
  for (int i = 0; i < 64 * 32; i++) m->w_data[i] = (float)((i * 7919) % 113) / 113.0f - 0.5f;
  m->w.has_raw_data = 1;
  m->w.raw_data.data = (uint8_t *)m->w_data; m->w.raw_data.len = sizeof m->w_data;
  onnx__tensor_proto__init(&m->b);
  m->b.name = "B"; m->b.has_data_type = 1; m->b.data_type = MOPT_DT_FLOAT;
  m->b_dims[0] = 32; m->b.n_dims = 1; m->b.dims = m->b_dims;
  m->b.n_float_data = 32; m->b.float_data = m->b_data;   /* typed field on purpose */
  m->inits[0] = &m->w; m->inits[1] = &m->b;
  m->graph.n_initializer = 2; m->graph.initializer = m->inits;

  onnx__value_info_proto__init(&m->vi_x); m->vi_x.name = "X";
  onnx__value_info_proto__init(&m->vi_y); m->vi_y.name = "Y";
  m->ins[0] = &m->vi_x; m->outs[0] = &m->vi_y;
  m->graph.n_input = 1; m->graph.input = m->ins;
  m->graph.n_output = 1; m->graph.output = m->outs;
}

static uint8_t *pack(built *m, size_t *len) {
  *len = onnx__model_proto__get_packed_size(&m->model);
  uint8_t *buf = malloc(*len ? *len : 1);
  assert_non_null(buf);
  onnx__model_proto__pack(&m->model, buf);
  return buf;
}

static int scan_built(built *m, mopt_model_info *info, mopt_diag *d) {
  size_t len;
  uint8_t *buf = pack(m, &len);
  int rc = mopt_model_scan(buf, len, NULL, info, d);
  free(buf);
  return rc;
}

static void test_valid_model_metadata(void **state) {
  (void)state;
  built m; build(&m);
  mopt_model_info info; mopt_diag d;
  assert_int_equal(scan_built(&m, &info, &d), 0);
  assert_int_equal(info.ir_version, 7);
  assert_int_equal(info.default_opset, 13);
  assert_int_equal(info.n_opsets, 1);
  assert_int_equal(info.node_count, 2);
  assert_int_equal(info.weight_count, 2);
  assert_int_equal(info.param_count, 64 * 32 + 32);
  assert_int_equal(info.weight_bytes, (64 * 32 + 32) * 4);
}

typedef struct seen { int count; uint64_t w_off, w_len; int w_loc; int64_t w_d0; uint64_t b_len; } seen;
static int on_tensor(const mopt_scan_tensor *t, void *ctx) {
  seen *s = ctx;
  if (!strcmp(t->name, "W")) {
    s->w_off = t->raw_offset; s->w_len = t->raw_length; s->w_loc = t->location; s->w_d0 = t->dims[0];
  }
  if (!strcmp(t->name, "B")) s->b_len = t->raw_length;
  s->count++;
  return 0;
}

static void test_tensor_ranges(void **state) {
  (void)state;
  built m; build(&m);
  size_t len;
  uint8_t *buf = pack(&m, &len);
  seen sn = {0};
  assert_int_equal(mopt_model_scan_tensors(buf, len, NULL, on_tensor, &sn, NULL, NULL), 0);
  assert_int_equal(sn.count, 2);
  assert_int_equal(sn.w_len, sizeof m.w_data);
  assert_int_equal(sn.w_loc, MOPT_LOC_INITIALIZER);
  assert_int_equal(sn.w_d0, 64);
  assert_memory_equal(buf + sn.w_off, m.w_data, sizeof m.w_data);
  assert_int_equal(sn.b_len, 0);   /* typed fields: no raw range */
  free(buf);
}

static void expect_reject(built *m, int err, const char *msg_part, const char *where_part) {
  mopt_diag d;
  memset(&d, 0, sizeof d);
  int rc = scan_built(m, NULL, &d);
  if (rc != err || !strstr(d.msg, msg_part) || !strstr(d.where, where_part))
    fail_msg("rc %d (%s) want %d; msg '%s' want '%s'; where '%s' want '%s'", rc, mopt_errcode(rc),
             err, d.msg, msg_part, d.where, where_part);
}

static void test_raw_data_length_mismatch(void **state) {
  (void)state;
  built m; build(&m);
  m.w.raw_data.len = 100;
  expect_reject(&m, MOPT_EMODEL, "raw_data holds 100 bytes but shape and float32 need 8192", "byte");
}

static void test_typed_length_mismatch(void **state) {
  (void)state;
  built m; build(&m);
  m.b.n_float_data = 31;
  expect_reject(&m, MOPT_EMODEL, "float_data holds 31 values but the shape needs 32", "byte");
}

static void test_dims_overflow_and_negative(void **state) {
  (void)state;
  built m; build(&m);
  m.w_dims[0] = INT64_C(1) << 40; m.w_dims[1] = INT64_C(1) << 40;
  expect_reject(&m, MOPT_ELIMIT, "overflows", "byte");
  build(&m);
  m.w_dims[0] = -4;
  expect_reject(&m, MOPT_EMODEL, "negative dimension", "byte");
  build(&m);
  m.w_dims[0] = INT64_C(1) << 20; m.w_dims[1] = INT64_C(1) << 20;   /* 2^40 > default 2^34 */
  expect_reject(&m, MOPT_ELIMIT, "elements (limit", "byte");
}

static void test_unknown_dtype(void **state) {
  (void)state;
  built m; build(&m);
  m.w.data_type = 99;
  expect_reject(&m, MOPT_EMODEL, "unknown data type", "byte");
  build(&m);
  m.w.has_data_type = 0;
  expect_reject(&m, MOPT_EMODEL, "unknown data type", "byte");
}

static void test_missing_input_and_cycle(void **state) {
  (void)state;
  built m; build(&m);
  m.mm_in[1] = "W_nowhere";
  expect_reject(&m, MOPT_EMODEL, "input 'W_nowhere' is not a graph input", "node 'mm' (MatMul)");
  build(&m);
  m.mm_in[0] = "Y";   /* mm consumes add's output, add consumes mm's: a cycle */
  expect_reject(&m, MOPT_EMODEL, "cycle", "node '");
  build(&m);
  m.add_out[0] = "XW";   /* produced twice */
  expect_reject(&m, MOPT_EMODEL, "produced by more than one node", "node 'add'");
}

static void test_unsorted_graph_is_refused(void **state) {
  (void)state;
  built m; build(&m);
  m.nodes[0] = &m.n_add; m.nodes[1] = &m.n_mm;   /* reversed order: a DAG, but not sorted */
  expect_reject(&m, MOPT_EMODEL, "input 'XW' is used before node 'mm' produces it", "node 'add'");
}

static void test_external_data_refused_without_bundle(void **state) {
  (void)state;
  built m; build(&m);
  Onnx__StringStringEntryProto loc, *ents[1];
  onnx__string_string_entry_proto__init(&loc);
  loc.key = "location"; loc.value = "weights.bin";
  ents[0] = &loc;
  m.w.has_raw_data = 0;
  m.w.n_external_data = 1; m.w.external_data = ents;
  m.w.has_data_location = 1; m.w.data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  expect_reject(&m, MOPT_EUNSUPPORTED, "external file 'weights.bin'", "byte");
  loc.value = "../../etc/passwd";
  expect_reject(&m, MOPT_EMODEL, "leaves the bundle", "byte");
  loc.value = "/etc/passwd";
  expect_reject(&m, MOPT_EMODEL, "is absolute", "byte");
}

static void test_external_data_in_bundle(void **state) {
  (void)state;
  char dir[] = "/tmp/moptd-scan-XXXXXX";
  assert_non_null(mkdtemp(dir));
  built m; build(&m);
  char path[256];
  snprintf(path, sizeof path, "%s/weights.bin", dir);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(m.w_data, 1, sizeof m.w_data, f), sizeof m.w_data);
  fclose(f);
  Onnx__StringStringEntryProto loc, *ents[1];
  onnx__string_string_entry_proto__init(&loc);
  loc.key = "location"; loc.value = "weights.bin";
  ents[0] = &loc;
  m.w.has_raw_data = 0;
  m.w.n_external_data = 1; m.w.external_data = ents;
  m.w.has_data_location = 1; m.w.data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  size_t len;
  uint8_t *buf = pack(&m, &len);
  mopt_load_limits lim = {0};
  lim.bundle_dir = dir;
  mopt_diag d;
  assert_int_equal(mopt_model_scan(buf, len, &lim, NULL, &d), 0);
  /* the same name through a symlink is refused */
  char link[256];
  snprintf(link, sizeof link, "%s/link.bin", dir);
  assert_int_equal(symlink(path, link), 0);
  loc.value = "link.bin";
  free(buf);
  buf = pack(&m, &len);
  int rc = mopt_model_scan(buf, len, &lim, NULL, &d);
  assert_int_equal(rc, MOPT_EMODEL);
  assert_non_null(strstr(d.msg, "symlink"));
  free(buf);
  unlink(link); unlink(path); rmdir(dir);
}

static void test_empty_random_and_truncated(void **state) {
  (void)state;
  mopt_diag d;
  assert_int_equal(mopt_model_scan((const uint8_t *)"", 0, NULL, NULL, &d), MOPT_EPARSE);
  assert_non_null(strstr(d.msg, "empty"));
  uint8_t rnd[4096];
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < sizeof rnd; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; rnd[i] = (uint8_t)x; }
  assert_true(mopt_model_scan(rnd, sizeof rnd, NULL, NULL, &d) < 0);
  built m; build(&m);
  size_t len;
  uint8_t *buf = pack(&m, &len);
  /* Every strict prefix that cuts into the graph is rejected; none crashes (run under ASan). */
  size_t rejected = 0;
  for (size_t cut = 0; cut < len; cut++) {
    uint8_t *copy = malloc(cut ? cut : 1);
    memcpy(copy, buf, cut);
    if (mopt_model_scan(copy, cut, NULL, NULL, &d) < 0) rejected++;
    free(copy);
  }
  assert_int_equal(rejected, len);
  free(buf);
}

static void test_byte_flips_never_crash(void **state) {
  (void)state;
  built m; build(&m);
  m.w_dims[0] = 4; m.w_dims[1] = 4; m.w.raw_data.len = 64;   /* keep it small: flip every byte */
  m.b_dims[0] = 4; m.b.n_float_data = 4;
  size_t len;
  uint8_t *buf = pack(&m, &len);
  assert_int_equal(mopt_model_scan(buf, len, NULL, NULL, NULL), 0);
  for (size_t i = 0; i < len; i++) {
    for (int bit = 0; bit < 8; bit++) {
      buf[i] ^= (uint8_t)(1u << bit);
      mopt_diag d;
      int rc = mopt_model_scan(buf, len, NULL, NULL, &d);
      assert_true(rc == 0 || (rc < 0 && d.msg[0]));
      buf[i] ^= (uint8_t)(1u << bit);
    }
  }
  free(buf);
}

static void test_deep_nesting_bounded(void **state) {
  (void)state;
  /* 100,000 nested length-delimited graph fields: Model.graph → Graph.node → Node.attribute →
   * Attribute.g → … built by hand; must fail with a limit error, not overflow the stack. */
  size_t depth = 100000, cap = depth * 16 + 64;
  uint8_t *buf = malloc(cap);
  size_t pos = cap;
  /* innermost: empty graph; wrap alternately, writing backwards */
  static const uint8_t tags[3] = {0x2a /* Attribute.g = 6 */, 0x2a /* Node.attribute = 5 */,
                                  0x0a /* Graph.node = 1 */};
  size_t inner = 0;
  for (size_t i = 0; i < depth; i++) {
    uint8_t tag = tags[i % 3];
    size_t l = inner;
    uint8_t v[10]; size_t nv = 0;
    do { v[nv++] = (uint8_t)((l & 0x7f) | (l > 0x7f ? 0x80 : 0)); l >>= 7; } while (l);
    pos -= nv; memcpy(buf + pos, v, nv);
    buf[--pos] = tag;
    inner = cap - pos;
  }
  /* model.graph (field 7) around it */
  size_t l = inner; uint8_t v[10]; size_t nv = 0;
  do { v[nv++] = (uint8_t)((l & 0x7f) | (l > 0x7f ? 0x80 : 0)); l >>= 7; } while (l);
  pos -= nv; memcpy(buf + pos, v, nv);
  buf[--pos] = 0x3a;
  mopt_diag d;
  int rc = mopt_model_scan(buf + pos, cap - pos, NULL, NULL, &d);
  assert_int_equal(rc, MOPT_ELIMIT);
  free(buf);
}

static void test_backend_test_data_all_accepted(void **state) {
  (void)state;
  const char *roots[] = {"/usr/share/libonnx-testdata/data/node",
                         "/usr/share/libonnx-testdata/data/simple",
                         "/usr/share/libonnx-testdata/data/pytorch-converted",
                         "/usr/share/libonnx-testdata/data/pytorch-operator",
                         "/usr/share/libonnx-testdata/data/real"};
  size_t checked = 0;
  for (size_t r = 0; r < sizeof roots / sizeof roots[0]; r++) {
    DIR *dir = opendir(roots[r]);
    if (!dir) continue;
    struct dirent *e;
    while ((e = readdir(dir))) {
      if (e->d_name[0] == '.') continue;
      char path[1024];
      snprintf(path, sizeof path, "%s/%s/model.onnx", roots[r], e->d_name);
      if (access(path, R_OK)) continue;
      mopt_diag d;
      mopt_model_info info;
      int rc = mopt_model_scan_file(path, NULL, &info, &d);
      if (rc) fail_msg("%s: %s at %s: %s", path, mopt_errcode(rc), d.where, d.msg);
      checked++;
    }
    closedir(dir);
  }
  if (!checked) skip();
  assert_true(checked > 1000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_model_metadata),
      cmocka_unit_test(test_tensor_ranges),
      cmocka_unit_test(test_raw_data_length_mismatch),
      cmocka_unit_test(test_typed_length_mismatch),
      cmocka_unit_test(test_dims_overflow_and_negative),
      cmocka_unit_test(test_unknown_dtype),
      cmocka_unit_test(test_missing_input_and_cycle),
      cmocka_unit_test(test_unsorted_graph_is_refused),
      cmocka_unit_test(test_external_data_refused_without_bundle),
      cmocka_unit_test(test_external_data_in_bundle),
      cmocka_unit_test(test_empty_random_and_truncated),
      cmocka_unit_test(test_byte_flips_never_crash),
      cmocka_unit_test(test_deep_nesting_bounded),
      cmocka_unit_test(test_backend_test_data_all_accepted),
  };
  return cmocka_run_group_tests_name("core/scan", tests, NULL, NULL);
}
