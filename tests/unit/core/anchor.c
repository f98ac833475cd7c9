/* tests/unit/core/anchor.c — anchored optimization: two versions of a small model (v2 = v1 with
 * small changes), v1 optimized, then v2 optimized with v1's output as the anchor. Checks that
 * quantize reuses v1's scales byte for byte, cluster its centroid table, prune its mask, that the
 * report counts the anchored tensors, and that a far-off v2 is not anchored (the bound holds). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ktest.h"
#include "model_builder.h"
#include "mopt.h"

/* X[2,64] → MatMul W1[64,96] → MatMul W2[96,32] → Y. version 1: base values; 2: plus a small
 * wiggle (every weight moves by up to ~1/3 of an int8 step, ranges move too); 3: scaled by 3. */
static void write_model(const char *path, int version) {
  Onnx__ModelProto *m = mb_model(13, 7);
  Onnx__GraphProto *g = m->graph;
  int64_t xd[2] = {2, 64}, d1[2] = {64, 96}, d2[2] = {96, 32}, yd[2] = {2, 32};
  mb_input(g, "X", MOPT_DT_FLOAT, 2, xd);
  const int64_t *dims[2] = {d1, d2};
  const char *names[2] = {"W1", "W2"};
  for (int t = 0; t < 2; t++) {
    size_t n = (size_t)(dims[t][0] * dims[t][1]);
    float *v = mb_values(n, (unsigned)t + 1);
    for (size_t i = 0; i < n; i++) {
      if (version == 2) v[i] += 0.002f * (float)__builtin_sin((double)i * 1.7);
      if (version == 3) v[i] *= 3.0f;
    }
    mb_init(g, mb_tensor_f32(names[t], 2, dims[t], v));
    free(v);
  }
  mb_node(g, "MatMul", "X,W1", "H", "mm1");
  mb_node(g, "MatMul", "H,W2", "Y", "mm2");
  mb_output(g, "Y", MOPT_DT_FLOAT);
  (void)yd;
  size_t len;
  uint8_t *b = mb_pack(m, &len);
  mb_free(m);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, len, f), len);
  fclose(f);
  free(b);
}

static char g_dir[64];
static char *tmp_path(const char *name) {
  static char buf[4][128];
  static int k;
  char *p = buf[k++ & 3];
  snprintf(p, 128, "%s/%s", g_dir, name);
  return p;
}

/* Optimizes in → out with one pass; anchor may be NULL. Returns the malloc'd report. */
static char *optimize(const char *in, const char *out, const mopt_pass *p, const char *anchor) {
  mopt_spec s;
  mopt_spec_init(&s);
  s.passes[0] = *p;
  s.passes[0].use_anchor = anchor != NULL;
  s.n_passes = 1;
  s.anchor_path = anchor;
  mopt_model *m = NULL;
  mopt_diag d;
  memset(&d, 0, sizeof d);
  assert_int_equal(mopt_model_load_file(in, NULL, &m, &d), 0);
  char *rep = NULL;
  int rc = mopt_pipeline_run(m, &s, NULL, NULL, &rep, &d);
  if (rc) fprintf(stderr, "pipeline: %s (%s)\n", d.msg, d.where);
  assert_int_equal(rc, 0);
  assert_int_equal(mopt_model_save_file(m, out, &d), 0);
  mopt_model_destroy(m);
  mopt_spec_free(&s);
  return rep;
}

/* Decoded values of the stored tensor `name` (an initializer of the saved model). */
static float *stored(const char *path, const char *name, uint64_t *n) {
  mopt_model *m = NULL;
  assert_int_equal(mopt_model_load_file(path, NULL, &m, NULL), 0);
  mopt_weight *ws;
  size_t nw;
  assert_int_equal(mopt_model_weights(m, &ws, &nw), 0);
  float *v = NULL;
  for (size_t i = 0; i < nw && !v; i++)
    if (!strcmp(ws[i].name, name)) {
      assert_int_equal(mopt_weight_read_f32(m, &ws[i], &v, NULL), 0);
      *n = ws[i].nelem;
    }
  mopt_model_destroy(m);
  assert_non_null(v);
  return v;
}

static int same_tensor(const char *a, const char *b, const char *name) {
  uint64_t na = 0, nb = 0;
  float *va = stored(a, name, &na), *vb = stored(b, name, &nb);
  int same = na == nb && memcmp(va, vb, na * sizeof *va) == 0;
  free(va);
  free(vb);
  return same;
}

static int setup(void **st) {
  (void)st;
  snprintf(g_dir, sizeof g_dir, "/tmp/mopt-anchor-XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  write_model(tmp_path("v1.onnx"), 1);
  write_model(tmp_path("v2.onnx"), 2);
  write_model(tmp_path("v3.onnx"), 3);
  return 0;
}

static int teardown(void **st) {
  (void)st;
  const char *f[] = {"v1.onnx", "v2.onnx", "v3.onnx", "o1.onnx", "o2.onnx", "o2a.onnx", "o3a.onnx"};
  for (size_t i = 0; i < sizeof f / sizeof *f; i++) unlink(tmp_path(f[i]));
  rmdir(g_dir);
  return 0;
}

/* Number of equal float32 values at the same positions of two stored tensors. */
static size_t equal_count(const char *a, const char *b, const char *name) {
  uint64_t na = 0, nb = 0;
  float *va = stored(a, name, &na), *vb = stored(b, name, &nb);
  assert_int_equal(na, nb);
  size_t same = 0;
  for (uint64_t i = 0; i < na; i++) same += memcmp(va + i, vb + i, sizeof *va) == 0;
  free(va);
  free(vb);
  return same;
}

static void quantize_reuses_scales(void **st) {
  (void)st;
  /* per tensor: one scale, reused whole */
  mopt_pass p = {.op = MOPT_PASS_QUANTIZE, .qtype = MOPT_DT_INT8,
                 .granularity = MOPT_GRAN_PER_TENSOR, .symmetric = 1};
  free(optimize(tmp_path("v1.onnx"), tmp_path("o1.onnx"), &p, NULL));
  char *plain = optimize(tmp_path("v2.onnx"), tmp_path("o2.onnx"), &p, NULL);
  char *anch = optimize(tmp_path("v2.onnx"), tmp_path("o2a.onnx"), &p, tmp_path("o1.onnx"));
  assert_non_null(strstr(plain, "\"anchored_tensors\":0"));
  assert_non_null(strstr(anch, "\"anchored_tensors\":2"));
  assert_non_null(strstr(anch, "\"anchored\":true"));
  /* fresh scales of v2 differ from v1's; anchored ones are v1's, byte for byte */
  assert_false(same_tensor(tmp_path("o1.onnx"), tmp_path("o2.onnx"), "W1__mopt_scale"));
  assert_true(same_tensor(tmp_path("o1.onnx"), tmp_path("o2a.onnx"), "W1__mopt_scale"));
  assert_true(same_tensor(tmp_path("o1.onnx"), tmp_path("o2a.onnx"), "W2__mopt_scale"));
  free(plain);
  free(anch);

  /* per channel: the groups the report says were reused are v1's bytes, fresh ones are not */
  p.granularity = MOPT_GRAN_PER_CHANNEL;
  free(optimize(tmp_path("v1.onnx"), tmp_path("o1.onnx"), &p, NULL));
  plain = optimize(tmp_path("v2.onnx"), tmp_path("o2.onnx"), &p, NULL);
  anch = optimize(tmp_path("v2.onnx"), tmp_path("o2a.onnx"), &p, tmp_path("o1.onnx"));
  assert_non_null(strstr(anch, "\"anchored_tensors\":2"));
  const char *note = strstr(anch, "scales in ");
  assert_non_null(note);
  unsigned reused = 0, groups = 0;
  assert_int_equal(sscanf(note, "scales in %u of %u groups", &reused, &groups), 2);
  assert_int_equal(groups, 96);                            /* W1 comes first: 96 channels */
  assert_true(reused > 0);
  size_t fresh_same = equal_count(tmp_path("o1.onnx"), tmp_path("o2.onnx"), "W1__mopt_scale");
  size_t anch_same = equal_count(tmp_path("o1.onnx"), tmp_path("o2a.onnx"), "W1__mopt_scale");
  assert_true(anch_same >= reused);
  assert_true(anch_same > fresh_same);
  free(plain);
  free(anch);

  /* v3 = 3 x v1: v1's scales would clip everything, the 0.5 dB bound refuses them */
  p.granularity = MOPT_GRAN_PER_TENSOR;
  free(optimize(tmp_path("v1.onnx"), tmp_path("o1.onnx"), &p, NULL));
  char *far = optimize(tmp_path("v3.onnx"), tmp_path("o3a.onnx"), &p, tmp_path("o1.onnx"));
  assert_non_null(strstr(far, "\"anchored_tensors\":0"));
  assert_false(same_tensor(tmp_path("o1.onnx"), tmp_path("o3a.onnx"), "W1__mopt_scale"));
  free(far);
}

static void cluster_reuses_centroids(void **st) {
  (void)st;
  mopt_pass p = {.op = MOPT_PASS_CLUSTER, .clusters = 16, .init = MOPT_INIT_KMEANSPP};
  free(optimize(tmp_path("v1.onnx"), tmp_path("o1.onnx"), &p, NULL));
  char *anch = optimize(tmp_path("v2.onnx"), tmp_path("o2a.onnx"), &p, tmp_path("o1.onnx"));
  assert_non_null(strstr(anch, "\"anchored_tensors\":2"));
  assert_true(same_tensor(tmp_path("o1.onnx"), tmp_path("o2a.onnx"), "W1__mopt_table"));
  free(anch);
  char *far = optimize(tmp_path("v3.onnx"), tmp_path("o3a.onnx"), &p, tmp_path("o1.onnx"));
  assert_non_null(strstr(far, "\"anchored_tensors\":0"));
  free(far);
}

static void prune_keeps_mask(void **st) {
  (void)st;
  mopt_pass p = {.op = MOPT_PASS_PRUNE, .sparsity = 0.5};
  free(optimize(tmp_path("v1.onnx"), tmp_path("o1.onnx"), &p, NULL));
  char *anch = optimize(tmp_path("v2.onnx"), tmp_path("o2a.onnx"), &p, tmp_path("o1.onnx"));
  assert_non_null(strstr(anch, "\"anchored_tensors\":2"));
  uint64_t n1 = 0, n2 = 0;
  float *a = stored(tmp_path("o1.onnx"), "W1", &n1), *b = stored(tmp_path("o2a.onnx"), "W1", &n2);
  assert_int_equal(n1, n2);
  size_t zeros = 0;
  for (uint64_t i = 0; i < n1; i++) {
    assert_int_equal(a[i] == 0.0f, b[i] == 0.0f);
    zeros += a[i] == 0.0f;
  }
  assert_int_equal(zeros, n1 / 2);
  free(a);
  free(b);
  free(anch);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(quantize_reuses_scales),
    cmocka_unit_test(cluster_reuses_centroids),
    cmocka_unit_test(prune_keeps_mask),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
