/* report.c — the optimization report as JSON, written by hand (core links no JSON library),
 * plus the measurements only the report needs: zstd-compressed sizes and peak RSS.
 *
 * Trade-off: a tiny string builder with correct escaping instead of a JSON library keeps core's
 * dependency list short; the shape is fixed and documented below, so a writer is enough.
 *
 * Shape: {"version","seed","tensors":[{name, graph_path, location, consumer, shape,
 *   dtype_before, dtype_after, encoding, bytes_before, bytes_after, sparsity_before, sparsity,
 *   distinct_values_before, distinct_values, snr_db, max_abs_error, fp16_clamped, rank,
 *   anchored, passes:[{op, sparsity, distinct_values, note}]}],
 *  "passes":[{op, time_ms, tensors, sparsity_before, sparsity_after, distinct_before,
 *   distinct_after}],
 *  "totals":{weights_total, tensors_selected, file_bytes_before, file_bytes_after,
 *   zstd_bytes_before, zstd_bytes_after, weight_bytes_before, weight_bytes_after, decode_ms,
 *   encode_ms, save_ms, time_ms, peak_rss_bytes}}
 */
#include "pipeline_int.h"

#include "model_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zstd.h>

const char *mopt_pass_name(int32_t op) {
  static const char *const names[] = {
    [MOPT_PASS_PRUNE] = "prune", [MOPT_PASS_CLUSTER] = "cluster",
    [MOPT_PASS_QUANTIZE] = "quantize", [MOPT_PASS_FP16] = "fp16",
    [MOPT_PASS_DECOMPOSE] = "decompose",
  };
  if (op < 0 || op > MOPT_PASS_DECOMPOSE) return "unknown";
  return names[op];
}

void mopt_report_free(mopt_report *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n_tensors; i++) {
    free(r->t[i].name);
    free(r->t[i].graph_path);
    free(r->t[i].consumer);
  }
  free(r->t);
  memset(r, 0, sizeof *r);
}

/* A ProtobufCBuffer that counts the serialized bytes and streams them through a zstd level-3
 * compressor whose output is counted and discarded: sizes without materializing the file. */
typedef struct zcount {
  ProtobufCBuffer base;
  ZSTD_CCtx *cx;
  uint8_t out[1 << 16];
  uint64_t in_bytes, out_bytes;
  int err;
} zcount;

static void zc_feed(zcount *z, const uint8_t *data, size_t len, ZSTD_EndDirective mode) {
  ZSTD_inBuffer in = {data, len, 0};
  for (;;) {
    ZSTD_outBuffer ob = {z->out, sizeof z->out, 0};
    size_t r = ZSTD_compressStream2(z->cx, &ob, &in, mode);
    if (ZSTD_isError(r)) { z->err = 1; return; }
    z->out_bytes += ob.pos;
    if (mode == ZSTD_e_end ? r == 0 : in.pos == in.size) return;
  }
}

static void zc_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
  zcount *z = (zcount *)b;
  z->in_bytes += len;
  if (!z->err && len) zc_feed(z, data, len, ZSTD_e_continue);
}

int mopt_model_measure(const mopt_model *m, uint64_t *bytes, uint64_t *zbytes) {
  if (!m || m->nstreamed) return MOPT_EINVAL;
  zcount *z = calloc(1, sizeof *z);
  if (!z) return MOPT_ENOMEM;
  z->base.append = zc_append;
  z->cx = ZSTD_createCCtx();
  if (!z->cx) { free(z); return MOPT_ENOMEM; }
  ZSTD_CCtx_setParameter(z->cx, ZSTD_c_compressionLevel, 3);
  long nproc = sysconf(_SC_NPROCESSORS_ONLN);
  if (nproc > 1 && protobuf_c_message_get_packed_size(&m->pb->base) > (16u << 20))
    ZSTD_CCtx_setParameter(z->cx, ZSTD_c_nbWorkers, (int)nproc);
  protobuf_c_message_pack_to_buffer(&m->pb->base, &z->base);
  if (!z->err) zc_feed(z, NULL, 0, ZSTD_e_end);
  *bytes = z->in_bytes;
  *zbytes = z->err ? 0 : z->out_bytes;
  ZSTD_freeCCtx(z->cx);
  free(z);
  return 0;
}

int mopt_model_file_view(const mopt_model *m, const uint8_t **buf, size_t *len) {
  if (!m || !m->borrow || m->internalized || m->nstreamed ||
      protobuf_c_message_get_packed_size(&m->pb->base) != m->borrow_len)
    return 0;
  *buf = m->borrow;
  *len = m->borrow_len;
  return 1;
}

uint64_t mopt_zstd_size(const uint8_t *buf, size_t len, atomic_int *stop) {
  zcount *z = calloc(1, sizeof *z);
  if (!z || !(z->cx = ZSTD_createCCtx())) { free(z); return 0; }
  ZSTD_CCtx_setParameter(z->cx, ZSTD_c_compressionLevel, 3);
  for (size_t pos = 0; pos < len && !z->err && !(stop && atomic_load(stop));) {
    size_t take = len - pos < (1u << 20) ? len - pos : (1u << 20);
    zc_feed(z, buf + pos, take, ZSTD_e_continue);
    pos += take;
  }
  if (!z->err && !(stop && atomic_load(stop))) zc_feed(z, NULL, 0, ZSTD_e_end);
  uint64_t out = z->err || (stop && atomic_load(stop)) ? 0 : z->out_bytes;
  ZSTD_freeCCtx(z->cx);
  free(z);
  return out;
}

uint64_t mopt_peak_rss(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (uint64_t)ru.ru_maxrss * 1024u;
}

static void kv_u64(mopt_sb *s, const char *k, uint64_t v, int comma) {
  mopt_sb_printf(s, "%s\"%s\":%llu", comma ? "," : "", k, (unsigned long long)v);
}
static void kv_num(mopt_sb *s, const char *k, double v) {
  mopt_sb_printf(s, ",\"%s\":", k);
  mopt_sb_json_num(s, v);
}

char *mopt_report_json(const mopt_report *r) {
  mopt_sb s = {0};
  mopt_sb_printf(&s, "{\"version\":\"%s\",\"seed\":%llu,\"tensors\":[", MOPT_VERSION,
                 (unsigned long long)r->seed);
  for (size_t i = 0; i < r->n_tensors; i++) {
    const mopt_rep_tensor *t = &r->t[i];
    mopt_sb_puts(&s, i ? ",{\"name\":" : "{\"name\":");
    mopt_sb_json_str(&s, t->name);
    mopt_sb_puts(&s, ",\"graph_path\":");
    mopt_sb_json_str(&s, t->graph_path);
    mopt_sb_printf(&s, ",\"location\":\"%s\",\"consumer\":",
                   t->loc == MOPT_LOC_CONSTANT ? "constant" : "initializer");
    mopt_sb_json_str(&s, t->consumer);
    mopt_sb_puts(&s, ",\"shape\":[");
    for (int32_t d = 0; d < t->ndim; d++)
      mopt_sb_printf(&s, "%s%lld", d ? "," : "", (long long)t->dims[d]);
    mopt_sb_printf(&s, "],\"dtype_before\":\"%s\",\"dtype_after\":", mopt_dtype_name(t->dtype_before));
    mopt_sb_json_str(&s, t->dtype_after);
    mopt_sb_printf(&s, ",\"encoding\":\"%s\"", t->encoding);
    kv_u64(&s, "bytes_before", t->bytes_before, 1);
    kv_u64(&s, "bytes_after", t->bytes_after, 1);
    kv_num(&s, "sparsity_before", t->sparsity_before);
    kv_num(&s, "sparsity", t->sparsity);
    kv_u64(&s, "distinct_values_before", t->distinct_before, 1);
    kv_u64(&s, "distinct_values", t->distinct, 1);
    kv_num(&s, "snr_db", t->snr_db);
    kv_num(&s, "max_abs_error", t->max_abs_err);
    kv_u64(&s, "fp16_clamped", t->fp16_clamped, 1);
    if (t->rank > 0) kv_u64(&s, "rank", (uint64_t)t->rank, 1);
    else mopt_sb_puts(&s, ",\"rank\":null");
    mopt_sb_printf(&s, ",\"anchored\":%s,\"passes\":[", t->anchored ? "true" : "false");
    for (size_t p = 0; p < t->n_passes; p++) {
      const mopt_rep_tpass *tp = &t->passes[p];
      mopt_sb_printf(&s, "%s{\"op\":\"%s\"", p ? "," : "", mopt_pass_name(r->p[p].op));
      kv_num(&s, "sparsity", tp->sparsity);
      kv_u64(&s, "distinct_values", tp->distinct, 1);
      mopt_sb_puts(&s, ",\"note\":");
      mopt_sb_json_str(&s, tp->note[0] ? tp->note : NULL);
      mopt_sb_puts(&s, "}");
    }
    mopt_sb_puts(&s, "]}");
  }
  mopt_sb_puts(&s, "],\"passes\":[");
  for (size_t p = 0; p < r->n_passes; p++) {
    const mopt_rep_pass *rp = &r->p[p];
    mopt_sb_printf(&s, "%s{\"op\":\"%s\"", p ? "," : "", mopt_pass_name(rp->op));
    kv_num(&s, "time_ms", rp->time_ms);
    kv_u64(&s, "tensors", rp->tensors, 1);
    kv_num(&s, "sparsity_before", rp->elems ? (double)rp->zeros_before / (double)rp->elems : 0.0);
    kv_num(&s, "sparsity_after", rp->elems ? (double)rp->zeros_after / (double)rp->elems : 0.0);
    kv_u64(&s, "distinct_before", rp->distinct_before, 1);
    kv_u64(&s, "distinct_after", rp->distinct_after, 1);
    mopt_sb_puts(&s, "}");
  }
  mopt_sb_puts(&s, "],\"totals\":{");
  kv_u64(&s, "weights_total", r->weights_total, 0);
  kv_u64(&s, "tensors_selected", r->n_tensors, 1);
  uint64_t anchored = 0;
  for (size_t i = 0; i < r->n_tensors; i++) anchored += r->t[i].anchored != 0;
  kv_u64(&s, "anchored_tensors", anchored, 1);
  kv_u64(&s, "file_bytes_before", r->file_bytes_before, 1);
  kv_u64(&s, "file_bytes_after", r->file_bytes_after, 1);
  kv_u64(&s, "zstd_bytes_before", r->zstd_bytes_before, 1);
  kv_u64(&s, "zstd_bytes_after", r->zstd_bytes_after, 1);
  kv_u64(&s, "weight_bytes_before", r->weight_bytes_before, 1);
  kv_u64(&s, "weight_bytes_after", r->weight_bytes_after, 1);
  kv_num(&s, "decode_ms", r->decode_ms);
  kv_num(&s, "encode_ms", r->encode_ms);
  kv_num(&s, "save_ms", r->save_ms);
  kv_num(&s, "time_ms", r->total_ms);
  kv_u64(&s, "peak_rss_bytes", r->peak_rss_bytes, 1);
  mopt_sb_puts(&s, "}}");
  if (s.oom) { free(s.buf); return NULL; }
  return s.buf;
}
