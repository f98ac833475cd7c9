/* fuzz_load.c — libFuzzer target for the ONNX model loader (clang -fsanitize=fuzzer,address).
 *
 * For every input: load with small limits; if it loads, the invariants must hold:
 *   - save → load succeeds and save(load(save(x))) == save(x) byte for byte;
 *   - listing weights, info and op counts, and decoding every (small) weight work;
 *   - encoding the first float weights (int8 per tensor, fp16) keeps the model loadable.
 * Any violation aborts, so libFuzzer reports it with the input. Trade-off: limits are small
 * (1M elements per tensor) so each run stays fast and memory-bounded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void op_cb(const char *op, uint64_t count, void *ctx) {
  (void)op;
  *(uint64_t *)ctx += count;
}

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_load invariant violated: %s\n", what);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mopt_load_limits lim = {.max_tensor_elems = 1u << 20, .max_total_bytes = 64u << 20,
                          .max_graph_depth = 16};
  mopt_model *m = NULL, *mb = NULL;
  mopt_diag d, db;
  int rc = mopt_model_load(data, size, &lim, &m, &d);
  /* the zero-copy path (payloads borrowed from the input, as load_file does with its mapping)
   * must agree with the copying path */
  int rcb = mopt_int_load_borrowed(data, size, &lim, &mb, &db);
  check(rc == rcb, "borrowed and copying loads disagree");
  if (rc != 0) {
    check(m == NULL && mb == NULL, "failed load left a model");
    check(memchr(d.msg, 0, sizeof d.msg) != NULL && d.msg[0], "failed load without a message");
    return 0;
  }
  uint8_t *b1, *b2;
  size_t l1, l2;
  check(mopt_model_save(m, &b1, &l1) == 0, "save");
  check(mopt_model_save(mb, &b2, &l2) == 0, "save borrowed");
  check(l1 == l2 && memcmp(b1, b2, l1) == 0, "borrowed load saves different bytes");
  free(b2);
  /* exercise the encoders on the borrowed model too (frees must never touch the input) */
  mopt_weight *wb;
  size_t nb;
  check(mopt_model_weights(mb, &wb, &nb) == 0, "weights (borrowed)");
  for (size_t i = 0; i < nb; i++) {
    if (!wb[i].is_weight || wb[i].nelem > (1u << 16)) continue;
    float *f;
    if (mopt_weight_read_f32(mb, &wb[i], &f, &db) != 0) continue;
    mopt_weight_set_dense(mb, &wb[i], f, &db);
    free(f);
    break;
  }
  mopt_model_prune_unused(mb);
  mopt_model_destroy(mb);
  mopt_model *m2;
  check(mopt_model_load(b1, l1, &lim, &m2, &d) == 0, "reload of saved bytes");
  check(mopt_model_save(m2, &b2, &l2) == 0, "second save");
  check(l1 == l2 && memcmp(b1, b2, l1) == 0, "save(load(save(x))) != save(x)");
  mopt_model_destroy(m2);
  free(b1);
  free(b2);

  mopt_model_info info;
  check(mopt_model_info_get(m, &info) == 0, "info");
  uint64_t nodes = 0;
  mopt_model_op_counts(m, op_cb, &nodes);
  check(nodes == info.node_count, "op counts disagree with node count");

  mopt_weight *w;
  size_t n;
  check(mopt_model_weights(m, &w, &n) == 0, "weights");
  int encoded = 0;
  for (size_t i = 0; i < n; i++) {
    if (w[i].nelem > (1u << 16)) continue;
    float *f;
    if (mopt_weight_read_f32(m, &w[i], &f, &d) != 0) continue;
    if (w[i].is_weight && encoded < 2 && w[i].nelem > 0) {
      if (encoded == 0) {
        int32_t *q = calloc(w[i].nelem, sizeof *q);
        float scale = 0.5f;
        mopt_qtensor qt = {MOPT_DT_INT8, -1, 0, q, &scale, NULL, 1};
        if (q && mopt_weight_set_quantized(m, &w[i], &qt, &d) == 0) encoded++;
        free(q);
      } else {
        uint16_t *h = malloc(w[i].nelem * sizeof *h);
        for (uint64_t k = 0; h && k < w[i].nelem; k++) h[k] = mopt_f32_to_f16(f[k]);
        if (h && mopt_weight_set_f16(m, &w[i], h, &d) == 0) encoded++;
        free(h);
      }
    }
    free(f);
  }
  if (encoded) {
    check(mopt_model_prune_unused(m) == 0, "prune_unused");
    check(mopt_model_save(m, &b1, &l1) == 0, "save after encoding");
    if (mopt_model_load(b1, l1, &lim, &m2, &d) != 0) {
      fprintf(stderr, "reload after encoding: %s (%s)\n", d.msg, d.where);
      abort();
    }
    mopt_model_destroy(m2);
    free(b1);
  }
  mopt_model_destroy(m);
  return 0;
}
