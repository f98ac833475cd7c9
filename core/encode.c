/* encode.c — encoders that write a weight's compressed form back into the graph (in progress). */
#include "model_int.h"

int mopt_int_eval_encoded(const mopt_model *m, const mopt_weight *w, float *out, mopt_diag *diag) {
  (void)m; (void)out;
  return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name, "encoded weights cannot be read yet");
}
int mopt_weight_set_dense(mopt_model *m, const mopt_weight *w, const float *values, mopt_diag *diag) {
  (void)m; (void)values;
  return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name, "not implemented yet");
}
int mopt_weight_set_f16(mopt_model *m, const mopt_weight *w, const uint16_t *halves, mopt_diag *diag) {
  (void)m; (void)halves;
  return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name, "not implemented yet");
}
int mopt_weight_set_quantized(mopt_model *m, const mopt_weight *w, const mopt_qtensor *qt,
                              mopt_diag *diag) {
  (void)m; (void)qt;
  return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name, "not implemented yet");
}
int mopt_weight_set_lut(mopt_model *m, const mopt_weight *w, const mopt_lut *lut, mopt_diag *diag) {
  (void)m; (void)lut;
  return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name, "not implemented yet");
}
int mopt_weight_set_lowrank(mopt_model *m, const mopt_weight *w, int64_t rank, const float *a,
                            const float *b, mopt_diag *diag) {
  (void)m; (void)rank; (void)a; (void)b;
  return mopt_diag_set(diag, MOPT_EUNSUPPORTED, w->name, "not implemented yet");
}
int mopt_model_prune_unused(mopt_model *m) { (void)m; return 0; }
