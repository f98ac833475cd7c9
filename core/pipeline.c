/* pipeline.c — runs a job spec on a loaded model: select weights, decode each to a float working
 * copy, run the passes in order on a working state that remembers structure (zero mask, centroid
 * table + indices, quantization parameters, float16 halves, low-rank factors), then encode each
 * tensor once with the encoder matching its final state.
 *
 * Tensors stream one at a time (decode → passes → encode → free), so peak memory is the model
 * plus one tensor's working copies. The one cross-tensor decision, a global pruning threshold,
 * is found beforehand with two radix-histogram sweeps that replay the passes before it; that
 * replays deterministic work (time) to avoid holding every tensor in memory (space).
 *
 * One case skips the working copy: a quantize-only spec with no report on float32 weights that
 * lie in the mapped input (quantize_from_mapping). The parameters come from one read of the
 * mapping and the encoder computes the values again from it while the model is saved, so the
 * run reads the input twice and holds no per-tensor buffers; its output is byte-identical to the
 * general path's (tested).
 *
 * Chains preserve structure: prune → cluster keeps zeros as their own exact centroid;
 * prune → quantize keeps zeros exact (the zero point is an integer); cluster → quantize uses the
 * cluster granularity so every centroid maps to one quantized value (the distinct count cannot
 * grow); quantize/fp16 → prune re-encodes with the same parameters; cluster → prune keeps the
 * centroid table with an exact zero entry. Low-rank is terminal: later passes skip a decomposed
 * tensor and say so in the report. quantize with activations "dynamic" rewrites MatMul/Gemm
 * consumers (dynamic.c) and falls back to weight-only where it cannot.
 */
#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "mopt.h"
#include "pipeline_int.h"

typedef struct wstate {
  const mopt_weight *w;
  size_t n;
  float *vals, *orig;
  const mopt_f32u *orig_mapped;  /* the original values in the mapped input, instead of orig */
  size_t nonfinite_at;       /* 1 + index of the first NaN/Inf: the tensor is skipped */
  int touched;               /* a pass changed values (used when orig is not kept) */
  int pruned;
  /* clustered */
  int clustered;
  int32_t k, caxis;
  size_t n_tables;
  float *table;
  uint8_t *idx;
  mopt_cluster_enc cenc;
  /* quantized */
  int quantized;
  mopt_qlayout ql;
  int32_t qtype, qaxis;
  size_t ng;
  float *scales;
  int32_t *zps, *q;
  int dynamic;               /* encode as DynamicQuantizeLinear + MatMulInteger */
  /* float16 */
  int f16;
  uint16_t *halves;
  uint64_t clamped;
  /* low rank (consumed layout r x c) */
  int lowrank;
  int64_t rank, lr_r, lr_c;
  float *a, *b;
  int anchored;              /* a pass reused the anchor's parameters */
} wstate;

typedef struct pctx {
  mopt_model *m;
  const mopt_spec *spec;
  mopt_progress_fn progress;
  void *progress_ctx;
  mopt_diag *diag;
  int64_t opset;
  uint32_t thr[MOPT_MAX_PASSES];
  uint64_t ties[MOPT_MAX_PASSES];
  double units_done, units_total;
  int want_report;
  mopt_report *rep;
  mopt_model *anchor;        /* spec->anchor_path, loaded when a pass uses it */
  mopt_distinct *distinct;   /* the report's distinct-value counter, one for the run */
} pctx;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static void drop_cluster(wstate *s) {
  free(s->table);
  free(s->idx);
  s->table = NULL;
  s->idx = NULL;
  s->clustered = 0;
}
static void drop_quant(wstate *s) {
  free(s->scales);
  free(s->zps);
  free(s->q);
  s->scales = NULL;
  s->zps = s->q = NULL;
  s->quantized = 0;
  s->dynamic = 0;
}
static void drop_f16(wstate *s) {
  free(s->halves);
  s->halves = NULL;
  s->f16 = 0;
}
static void state_free(wstate *s) {
  drop_cluster(s);
  drop_quant(s);
  drop_f16(s);
  free(s->a);
  free(s->b);
  free(s->vals);
  free(s->orig);
  memset(s, 0, sizeof *s);
}

static int is_float_dtype(int32_t dt) {
  return dt == MOPT_DT_FLOAT || dt == MOPT_DT_FLOAT16 || dt == MOPT_DT_BFLOAT16 ||
         dt == MOPT_DT_DOUBLE;
}

static int selected(const mopt_spec *sp, const mopt_weight *w) {
  if (!w->is_weight || !is_float_dtype(w->dtype) || w->nelem < sp->min_elements) return 0;
  if (w->nelem == 0) return 0;
  if (sp->n_include) {
    int any = 0;
    for (size_t i = 0; i < sp->n_include && !any; i++)
      any = fnmatch(sp->include[i], w->name, 0) == 0;
    if (!any) return 0;
  }
  for (size_t i = 0; i < sp->n_exclude; i++)
    if (fnmatch(sp->exclude[i], w->name, 0) == 0) return 0;
  return 1;
}

static uint64_t tensor_seed(uint64_t seed, uint32_t index, size_t pass, uint64_t extra) {
  uint64_t s = seed ^ ((uint64_t)index << 32) ^ ((uint64_t)pass << 20) ^ extra;
  return mopt_rng_next(&s);
}

static int validate_spec(const mopt_spec *sp, mopt_diag *d) {
  char where[64];
  if (sp->n_passes > MOPT_MAX_PASSES)
    return mopt_diag_set(d, MOPT_ESPEC, "/passes", "at most %d passes", MOPT_MAX_PASSES);
  for (size_t i = 0; i < sp->n_passes; i++) {
    const mopt_pass *p = &sp->passes[i];
    snprintf(where, sizeof where, "/passes/%zu", i);
    switch (p->op) {
    case MOPT_PASS_PRUNE:
      if (p->pattern == MOPT_PRUNE_NM) {
        if (p->nm_m < 1 || p->nm_m > 256 || p->nm_n < 0 || p->nm_n >= p->nm_m)
          return mopt_diag_set(d, MOPT_ESPEC, where, "N:M pattern %d:%d needs 0 <= N < M <= 256",
                               p->nm_n, p->nm_m);
      } else if (!(p->sparsity >= 0.0 && p->sparsity < 1.0)) {
        return mopt_diag_set(d, MOPT_ESPEC, where, "sparsity %g is outside [0, 1)", p->sparsity);
      }
      if (p->pattern == MOPT_PRUNE_BLOCK && (p->block_r < 1 || p->block_c < 1))
        return mopt_diag_set(d, MOPT_ESPEC, where, "block pattern needs positive RxC");
      if (p->pattern == MOPT_PRUNE_CHANNEL && p->channel_norm != 1 && p->channel_norm != 2)
        return mopt_diag_set(d, MOPT_ESPEC, where, "channel norm must be 1 (L1) or 2 (L2)");
      if (p->pattern < MOPT_PRUNE_UNSTRUCTURED || p->pattern > MOPT_PRUNE_CHANNEL)
        return mopt_diag_set(d, MOPT_ESPEC, where, "unknown prune pattern");
      break;
    case MOPT_PASS_CLUSTER:
      if (p->clusters < 2 || p->clusters > 256)
        return mopt_diag_set(d, MOPT_ESPEC, where, "clusters %d is outside 2..256", p->clusters);
      break;
    case MOPT_PASS_QUANTIZE: {
      int32_t a, b;
      if (mopt_qrange(p->qtype, &a, &b) != 0)
        return mopt_diag_set(d, MOPT_ESPEC, where, "dtype must be int8, uint8, int4 or uint4");
      if (p->granularity == MOPT_GRAN_BLOCK && (p->block_size < 1 || p->block_size > 65536))
        return mopt_diag_set(d, MOPT_ESPEC, where, "block_size %d is out of range", p->block_size);
      if (p->activations == MOPT_ACT_DYNAMIC &&
          ((p->qtype != MOPT_DT_INT8 && p->qtype != MOPT_DT_UINT8) || p->granularity == MOPT_GRAN_BLOCK))
        return mopt_diag_set(d, MOPT_ESPEC, where,
                             "activations \"dynamic\" needs dtype int8 or uint8 and per_tensor or "
                             "per_channel granularity (MatMulInteger has no 4-bit or block form)");
      break;
    }
    case MOPT_PASS_FP16:
      break;
    case MOPT_PASS_DECOMPOSE:
      if (p->rank <= 0 && !(p->energy > 0.0 && p->energy <= 1.0))
        return mopt_diag_set(d, MOPT_ESPEC, where, "energy %g is outside (0, 1]", p->energy);
      break;
    default:
      return mopt_diag_set(d, MOPT_ESPEC, where, "unknown pass op %d", (int)p->op);
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- passes ---- */

static int report_progress(pctx *c, const char *step) {
  if (!c->progress) return 0;
  double f = c->units_total > 0 ? c->units_done / c->units_total : 1.0;
  if (f > 1.0) f = 1.0;
  if (c->progress(f, step, c->progress_ctx) != 0)
    return mopt_diag_set(c->diag, MOPT_ECANCELLED, step, "cancelled during %s", step);
  return 0;
}


static void note_set(char *note, const char *msg) {
  if (note && !note[0]) snprintf(note, 96, "%s", msg);
}

/* After pruning a clustered tensor: every table gets an exact 0.0 entry (an existing one, a
 * padding slot, or one more entry when k < 256) and pruned elements point at it, so the LUT
 * survives. Returns 0, or 1 when there is no room (k == 256 and a table is full). */
static int keep_zero_entry(wstate *s) {
  size_t k = (size_t)s->k, nt = s->n_tables;
  int grow = 0;
  for (size_t t = 0; t < nt && !grow; t++) {
    const float *tab = s->table + t * k;
    int room = 0;
    for (size_t j = 0; j < k && !room; j++) room = tab[j] == 0.0f || (j > 0 && tab[j] == tab[j - 1]);
    if (!room) grow = 1;
  }
  if (grow) {
    if (k >= 256) return 1;
    float *nt_tab = malloc(nt * (k + 1) * sizeof *nt_tab);
    if (!nt_tab) return 1;
    for (size_t t = 0; t < nt; t++) {
      memcpy(nt_tab + t * (k + 1), s->table + t * k, k * sizeof *nt_tab);
      nt_tab[t * (k + 1) + k] = nt_tab[t * (k + 1) + k - 1];   /* a padding slot */
    }
    free(s->table);
    s->table = nt_tab;
    s->k = (int32_t)++k;
  }
  size_t *zi = malloc(nt * sizeof *zi);
  if (!zi) return 1;
  size_t inner = 1;
  if (s->caxis >= 0)
    for (int32_t a = s->caxis + 1; a < s->w->ndim; a++) inner *= (size_t)s->w->dims[a];
  for (size_t t = 0; t < nt; t++) {
    float *tab = s->table + t * k;
    size_t z = k;
    for (size_t j = 0; j < k && z == k; j++)
      if (tab[j] == 0.0f) z = j;
    for (size_t j = 1; j < k && z == k; j++)
      if (tab[j] == tab[j - 1]) { tab[j] = 0.0f; z = j; }  /* padding is never pointed at */
    zi[t] = z;
  }
  for (size_t i = 0; i < s->n; i++) {
    if (s->vals[i] != 0.0f) continue;
    size_t t = s->caxis < 0 ? 0 : (i / inner) % nt;
    if (s->table[t * k + s->idx[i]] != 0.0f) s->idx[i] = (uint8_t)zi[t];
  }
  free(zi);
  return 0;
}

static int after_value_change(wstate *s, char *note) {
  if (s->quantized)
    mopt_quantize_apply(s->vals, &s->ql, s->qtype, s->scales, s->zps, s->q, s->vals);
  if (s->f16) {
    s->clamped += mopt_fp16_convert(s->vals, s->n, s->halves);
    for (size_t i = 0; i < s->n; i++) s->vals[i] = mopt_f16_to_f32(s->halves[i]);
  }
  if (s->clustered && keep_zero_entry(s) != 0) {
    drop_cluster(s);
    note_set(note, "centroid table dropped: 256 centroids leave no room for the zero");
  }
  return 0;
}

/* Anchored pruning: keeps the anchor's zero mask instead of the fresh one x when it zeroes at
 * least as many elements and the kept magnitude (L1 of kept weights) is within 2% of the fresh
 * mask's; N:M patterns also need the anchor's mask to be valid N:M. x0: values before pruning. */
static int prune_anchor(pctx *c, wstate *s, const mopt_pass *p, const float *x0, char *note) {
  const mopt_weight *w = s->w;
  float *av = NULL;
  int rc = mopt_anchor_values(c->anchor, s->w, &av);
  if (rc <= 0) return rc;
  size_t z_fresh = 0, z_anchor = 0;
  double l1_fresh = 0.0, l1_anchor = 0.0;
  for (size_t i = 0; i < s->n; i++) {
    z_fresh += s->vals[i] == 0.0f;
    l1_fresh += fabs((double)s->vals[i]);
    if (av[i] == 0.0f) z_anchor++;
    else l1_anchor += fabs((double)x0[i]);
  }
  int ok = z_anchor >= z_fresh && l1_anchor >= 0.98 * l1_fresh;
  for (size_t i = 0; ok && i < s->n; i++) av[i] = av[i] == 0.0f ? 0.0f : x0[i];
  if (ok && p->pattern == MOPT_PRUNE_NM) {
    int32_t ax = w->reduction_axis >= 0 ? w->reduction_axis : w->ndim - 1;
    ok = mopt_nm_check(av, mopt_view_make(w->dims, w->ndim, ax), p->nm_n, p->nm_m);
  }
  if (ok) {
    memcpy(s->vals, av, s->n * sizeof *av);
    s->anchored = 1;
    note_set(note, "anchored: kept the anchor's mask");
  }
  free(av);
  return 0;
}

/* The magnitude prune itself, in place on s->vals. Returns 0 when it pruned, 1 when the tensor
 * has nothing for this pattern (note says why). */
static int prune_fresh(pctx *c, wstate *s, size_t pi, int global_phase, char *note) {
  const mopt_pass *p = &c->spec->passes[pi];
  const mopt_weight *w = s->w;
  switch (p->pattern) {
  case MOPT_PRUNE_UNSTRUCTURED:
    if (p->scope == MOPT_SCOPE_GLOBAL && !global_phase)
      mopt_prune_threshold(s->vals, s->n, c->thr[pi], &c->ties[pi]);
    else if (p->scope != MOPT_SCOPE_GLOBAL)
      mopt_prune_unstructured(s->vals, s->n, p->sparsity, NULL);
    return 0;
  case MOPT_PRUNE_NM: {
    int32_t ax = w->reduction_axis >= 0 ? w->reduction_axis : w->ndim - 1;
    mopt_prune_nm(s->vals, mopt_view_make(w->dims, w->ndim, ax), p->nm_n, p->nm_m);
    if (w->reduction_axis < 0) note_set(note, "no reduction axis: N:M along the last axis");
    return 0;
  }
  case MOPT_PRUNE_BLOCK: {
    int64_t rows = w->ndim >= 1 ? w->dims[0] : 1;
    int64_t cols = rows ? (int64_t)s->n / rows : 0;
    mopt_prune_blocks(s->vals, rows, cols, p->block_r, p->block_c, p->sparsity);
    return 0;
  }
  case MOPT_PRUNE_CHANNEL:
    if (w->channel_axis < 0) {
      note_set(note, "skipped: no output-channel axis");
      return 1;
    }
    mopt_prune_channels(s->vals, mopt_view_make(w->dims, w->ndim, w->channel_axis),
                        p->channel_norm, p->sparsity);
    return 0;
  }
  return 0;
}

/* Prunes fresh; with an anchor (per-tensor unstructured or N:M), then offers the anchor's mask
 * against that result, which needs the values from before the pass (x0). */
static int pass_prune(pctx *c, wstate *s, size_t pi, int global_phase, char *note) {
  const mopt_pass *p = &c->spec->passes[pi];
  int try_anchor = p->use_anchor && c->anchor && !global_phase && p->scope != MOPT_SCOPE_GLOBAL &&
                   (p->pattern == MOPT_PRUNE_UNSTRUCTURED || p->pattern == MOPT_PRUNE_NM);
  float *x0 = NULL;
  if (try_anchor) {
    x0 = malloc(s->n * sizeof *x0);
    if (!x0) return MOPT_ENOMEM;
    memcpy(x0, s->vals, s->n * sizeof *x0);
  }
  int rc = 0;
  if (prune_fresh(c, s, pi, global_phase, note) == 0) {
    if (x0) rc = prune_anchor(c, s, p, x0, note);
    if (!rc) {
      s->pruned = 1;
      s->touched = 1;
      rc = after_value_change(s, note);
    }
  }
  free(x0);
  return rc;
}

/* Anchored clustering: assigns x0 (the values before the pass) to the anchor's centroid tables,
 * in the anchor's entry order so the stored table and indices repeat its bytes, and keeps that
 * when the inertia (sum of squared errors) is within 2% of the fresh k-means one in s. A tensor
 * that needs exact zeros (keep_zero) needs a 0.0 entry in every anchor table. */
static int cluster_anchor(pctx *c, wstate *s, const float *x0, int keep_zero, char *note) {
  int32_t ka = 0;
  float *tab = NULL;
  int rc = mopt_anchor_table(c->anchor, s->w, s->caxis, s->n_tables, &ka, &tab);
  if (rc <= 0) return rc;
  size_t k = (size_t)ka, nt = s->n_tables;
  float *sv = malloc(k * sizeof *sv);
  uint8_t *so = malloc(k), *idx = malloc(s->n), *ns = malloc(k * nt);
  size_t *nu = malloc(nt * sizeof *nu);
  float *su = malloc(nt * k * sizeof *su);
  int oom = !(sv && so && idx && ns && nu && su), ok = !oom;
  /* per table: distinct entries ascending, each with its first position in the anchor table */
  for (size_t t = 0; ok && t < nt; t++) {
    const float *tt = tab + t * k;
    size_t u = 0;
    int has_zero = 0;
    for (size_t j = 0; j < k; j++) {
      has_zero |= tt[j] == 0.0f;
      size_t pos = u;
      while (pos > 0 && sv[pos - 1] > tt[j]) pos--;
      if (pos > 0 && sv[pos - 1] == tt[j]) continue;          /* duplicate (padding) */
      memmove(sv + pos + 1, sv + pos, (u - pos) * sizeof *sv);
      memmove(so + pos + 1, so + pos, u - pos);
      sv[pos] = tt[j];
      so[pos] = (uint8_t)j;
      u++;
    }
    if (keep_zero && !has_zero) ok = 0;
    memcpy(su + t * k, sv, u * sizeof *sv);
    memcpy(ns + t * k, so, u);
    nu[t] = u;
  }
  double in_fresh = 0.0, in_anchor = 0.0;
  mopt_axis_view v = mopt_view_make(s->w->dims, s->w->ndim, s->caxis);
  for (size_t i = 0; ok && i < s->n; i++) {
    size_t t = s->caxis < 0 ? 0 : (i / (size_t)v.inner) % nt;
    uint8_t j = mopt_km_assign1(su + t * k, nu[t], x0[i]);
    idx[i] = ns[t * k + j];
    double ef = (double)x0[i] - (double)s->vals[i], ea = (double)x0[i] - (double)su[t * k + j];
    in_fresh += ef * ef;
    in_anchor += ea * ea;
  }
  if (ok && in_anchor <= 1.02 * in_fresh) {
    free(s->table);
    free(s->idx);
    s->table = tab;
    s->idx = idx;
    tab = NULL;
    idx = NULL;
    s->k = ka;
    for (size_t i = 0; i < s->n; i++) {
      size_t t = s->caxis < 0 ? 0 : (i / (size_t)v.inner) % nt;
      s->vals[i] = s->table[t * k + s->idx[i]];
    }
    s->anchored = 1;
    note_set(note, "anchored: reused the anchor's centroids");
  }
  free(tab); free(sv); free(so); free(idx); free(ns); free(nu); free(su);
  return oom ? MOPT_ENOMEM : 0;
}

static int pass_cluster(pctx *c, wstate *s, size_t pi, char *note) {
  const mopt_pass *p = &c->spec->passes[pi];
  const mopt_weight *w = s->w;
  if (s->quantized || s->f16) {
    drop_quant(s);
    drop_f16(s);
    note_set(note, "earlier quantized/float16 form replaced by clusters of its values");
  }
  drop_cluster(s);
  int keep_zero = s->pruned || mopt_sparsity(s->vals, s->n) >= 0.05;
  int32_t k = p->clusters;
  int32_t axis = p->granularity == MOPT_GRAN_PER_CHANNEL ? w->channel_axis : -1;
  if (p->granularity == MOPT_GRAN_PER_CHANNEL && axis < 0)
    note_set(note, "no output-channel axis: clustered per tensor");
  mopt_axis_view v = mopt_view_make(w->dims, w->ndim, axis);
  size_t nt = axis < 0 ? 1 : (size_t)v.dim;
  float *x0 = NULL;
  if (p->use_anchor && c->anchor) {
    x0 = malloc(s->n * sizeof *x0);
    if (!x0) return MOPT_ENOMEM;
    memcpy(x0, s->vals, s->n * sizeof *x0);
  }
  s->table = malloc(nt * (size_t)k * sizeof *s->table);
  s->idx = malloc(s->n);
  if (!s->table || !s->idx) { free(x0); return MOPT_ENOMEM; }
  mopt_km_init init = (mopt_km_init)p->init;
  if (axis < 0) {
    int rc = mopt_cluster_values(s->vals, s->n, 1, k, init,
                                 tensor_seed(c->spec->seed, w->index, pi, 0), keep_zero,
                                 s->table, s->idx);
    if (rc) { free(x0); return rc; }
    for (size_t i = 0; i < s->n; i++) s->vals[i] = s->table[s->idx[i]];
  } else {
    size_t per = (size_t)(v.outer * v.inner);
    float *buf = malloc(per * sizeof *buf);
    uint8_t *bi = malloc(per);
    if (!buf || !bi) { free(buf); free(bi); free(x0); return MOPT_ENOMEM; }
    for (int64_t d = 0; d < v.dim; d++) {
      if (d % 32 == 31) {                      /* long per-channel runs stay cancellable */
        int rc = report_progress(c, "cluster");
        if (rc) { free(buf); free(bi); free(x0); return rc; }
      }
      size_t m = 0;
      for (int64_t o = 0; o < v.outer; o++)
        for (int64_t i = 0; i < v.inner; i++) buf[m++] = s->vals[(o * v.dim + d) * v.inner + i];
      float *tab = s->table + (size_t)d * (size_t)k;
      int rc = mopt_cluster_values(buf, per, 1, k, init,
                                   tensor_seed(c->spec->seed, w->index, pi, (uint64_t)d + 1),
                                   keep_zero, tab, bi);
      if (rc) { free(buf); free(bi); free(x0); return rc; }
      m = 0;
      for (int64_t o = 0; o < v.outer; o++)
        for (int64_t i = 0; i < v.inner; i++, m++) {
          size_t e = (size_t)((o * v.dim + d) * v.inner + i);
          s->idx[e] = bi[m];
          s->vals[e] = tab[bi[m]];
        }
    }
    free(buf);
    free(bi);
  }
  s->clustered = 1;
  s->touched = 1;
  s->k = k;
  s->caxis = axis;
  s->n_tables = nt;
  s->cenc = p->encoding;
  if (x0) {
    int rc = cluster_anchor(c, s, x0, keep_zero, note);
    free(x0);
    if (rc) return rc;
  }
  return 0;
}

/* Group of element i in a quantization layout (the scale index mopt_quantize_apply uses). */
static size_t qgroup(const mopt_qlayout *l, size_t i) {
  size_t I = (size_t)l->v.inner, D = (size_t)l->v.dim;
  if (l->gran == 0) return 0;
  if (l->gran == 1) return (i / I) % D;
  size_t bs = (size_t)l->block_size, nb = (D + bs - 1) / bs, o = i / (I * D), d = (i / I) % D;
  return (o * nb + d / bs) * I + i % I;
}

typedef struct gexcess { double d; size_t g; } gexcess;
static int by_excess_desc(const void *a, const void *b) {
  double x = ((const gexcess *)a)->d, y = ((const gexcess *)b)->d;
  if (x != y) return x > y ? -1 : 1;
  return ((const gexcess *)a)->g < ((const gexcess *)b)->g ? -1 : 1;
}

/* Anchored quantization: re-quantizes x0 (the values before the pass) with the anchor's scales
 * and zero points (same type, axis and block size; s holds the fresh result). Candidates are the
 * groups where the anchor's parameters change at most 4 more of the anchor's stored integers
 * than fresh ones would (what an OTA delta pays for; 4 ~ the bytes of the scale that reuse
 * keeps; a tensor that shrank as a whole keeps its integers better with fresh, smaller scales). Candidates start on the anchor's parameters; groups are handed back to fresh parameters, worst excess error
 * first, until the tensor's squared error is at most 10^(0.5/10) times the fresh one.
 * Bound: the tensor's reconstruction SNR stays within 0.5 dB of the fresh parameters' SNR.
 * The tensor counts as anchored when at least one group keeps the anchor's parameters. */
static int quantize_anchor(pctx *c, wstate *s, const mopt_qlayout *l, int32_t qtype, int32_t axis,
                           size_t ng, const float *x0, char *note) {
  float *sc = malloc(ng * sizeof *sc), *deq = malloc(s->n * sizeof *deq);
  int32_t *zp = malloc(ng * sizeof *zp), *q = malloc(s->n * sizeof *q);
  double *err = calloc(2 * ng, sizeof *err);
  int32_t *qa = malloc(s->n * sizeof *qa);
  int64_t *chg = calloc(ng, sizeof *chg);
  int rc = sc && deq && zp && q && err && qa && chg ? 0 : MOPT_ENOMEM;
  if (!rc)
    rc = mopt_anchor_qparams(c->anchor, s->w, qtype, axis, l->gran == 2 ? l->block_size : 0, ng,
                             sc, zp, qa);
  if (rc == 1) {
    rc = 0;
    mopt_quantize_apply(x0, l, qtype, sc, zp, q, deq);
    for (size_t i = 0; i < s->n; i++) {
      size_t g = qgroup(l, i);
      double ef = (double)x0[i] - (double)s->vals[i], ea = (double)x0[i] - (double)deq[i];
      err[2 * g] += ef * ef;
      err[2 * g + 1] += ea * ea;
      chg[g] += (q[i] != qa[i]) - (s->q[i] != qa[i]);
    }
    const double bound = 1.1220184543019633;   /* 10^(0.5/10): 0.5 dB */
    double tot_f = 0.0, tot = 0.0;
    gexcess *ex = malloc(ng * sizeof *ex);
    if (!ex) rc = MOPT_ENOMEM;
    size_t nc = 0;
    for (size_t g = 0; ex && g < ng; g++) {
      tot_f += err[2 * g];
      if (chg[g] > 4) { tot += err[2 * g]; continue; }   /* a new scale costs ~4 changed bytes */
      tot += err[2 * g + 1];
      ex[nc].d = err[2 * g + 1] - err[2 * g];
      ex[nc++].g = g;
    }
    size_t reused = ex ? nc : 0, back = 0;
    if (ex) qsort(ex, nc, sizeof *ex, by_excess_desc);
    while (ex && back < nc && tot > bound * tot_f) tot -= ex[back++].d;
    reused -= back;
    for (size_t j = back; ex && j < nc; j++) {
      s->scales[ex[j].g] = sc[ex[j].g];
      s->zps[ex[j].g] = zp[ex[j].g];
    }
    free(ex);
    if (reused) {
      mopt_quantize_apply(x0, l, qtype, s->scales, s->zps, s->q, s->vals);
      s->anchored = 1;
      char msg[96];
      snprintf(msg, sizeof msg, "anchored: reused the anchor's scales in %zu of %zu groups",
               reused, ng);
      note_set(note, msg);
    }
  }
  free(sc); free(deq); free(zp); free(q); free(err); free(qa); free(chg);
  return rc;
}

/* Layout of a quantize pass on this weight: granularity and axis after the fallbacks (no
 * channel axis → per tensor; clustered weights keep their centroid groups), and whether the
 * dynamic-activation form applies. The notes say what changed. */
static void plan_quantize(pctx *c, const wstate *s, const mopt_pass *p, char *note,
                          mopt_qlayout *lay, int32_t *axis_out, int *dyn_out) {
  const mopt_weight *w = s->w;
  mopt_gran gran = p->granularity;
  int32_t axis = -1;
  if (s->clustered) {
    /* one quantized value per centroid: quantization groups may not split a centroid table */
    if (s->caxis < 0 && gran != MOPT_GRAN_PER_TENSOR) {
      gran = MOPT_GRAN_PER_TENSOR;
      note_set(note, "per-tensor centroids: quantized per tensor so distinct values do not grow");
    } else if (s->caxis >= 0 && gran != MOPT_GRAN_PER_TENSOR) {
      gran = MOPT_GRAN_PER_CHANNEL;
      axis = s->caxis;
      if (p->granularity == MOPT_GRAN_BLOCK)
        note_set(note, "per-channel centroids: quantized per channel so distinct values do not grow");
    }
  }
  if (gran == MOPT_GRAN_PER_CHANNEL && axis < 0) {
    axis = w->channel_axis;
    if (axis < 0) {
      gran = MOPT_GRAN_PER_TENSOR;
      note_set(note, "no output-channel axis: quantized per tensor");
    }
  }
  if (gran == MOPT_GRAN_BLOCK) {
    axis = w->reduction_axis >= 0 ? w->reduction_axis : w->ndim - 1;
    if (w->reduction_axis < 0) note_set(note, "no reduction axis: blocks along the last axis");
    if (axis < 0) { gran = MOPT_GRAN_PER_TENSOR; axis = -1; }
  }
  if (gran == MOPT_GRAN_PER_TENSOR) axis = -1;
  int dyn = 0;
  if (p->activations == MOPT_ACT_DYNAMIC) {
    const char *why = NULL;
    dyn = mopt_int_dynamic_ok(c->m, w, c->opset, &why);
    if (dyn && gran == MOPT_GRAN_PER_CHANNEL && axis != w->channel_axis) {
      dyn = 0;
      why = "per-channel centroids on another axis: weight-only";
    }
    if (!dyn) note_set(note, why ? why : "weight-only");
  }
  *lay = (mopt_qlayout){(int32_t)gran, mopt_view_make(w->dims, w->ndim, axis),
                        gran == MOPT_GRAN_BLOCK ? p->block_size : 0};
  *axis_out = axis;
  *dyn_out = dyn;
}

static int pass_quantize(pctx *c, wstate *s, size_t pi, char *note) {
  const mopt_pass *p = &c->spec->passes[pi];
  mopt_qlayout l;
  int32_t axis;
  int dyn;
  plan_quantize(c, s, p, note, &l, &axis, &dyn);
  drop_quant(s);
  if (s->f16) {
    drop_f16(s);
    note_set(note, "float16 form replaced by quantization of its values");
  }
  mopt_qconfig qc = {p->qtype, p->symmetric, p->mse_search};
  size_t ng = mopt_qlayout_groups(&l);
  s->scales = malloc(ng * sizeof *s->scales);
  s->zps = malloc(ng * sizeof *s->zps);
  s->q = malloc(s->n * sizeof *s->q);
  if (!s->scales || !s->zps || !s->q) return MOPT_ENOMEM;
  float *x0 = NULL;
  if (p->use_anchor && c->anchor && !dyn) {
    x0 = malloc(s->n * sizeof *x0);
    if (!x0) return MOPT_ENOMEM;
    memcpy(x0, s->vals, s->n * sizeof *x0);
  }
  int rc = mopt_quantize_tensor(s->vals, &l, &qc, s->scales, s->zps, s->q, s->vals);
  if (!rc && x0) rc = quantize_anchor(c, s, &l, p->qtype, axis, ng, x0, note);
  free(x0);
  if (rc) return rc;
  s->quantized = 1;
  s->dynamic = dyn;
  s->ql = l;
  s->qtype = p->qtype;
  s->qaxis = axis;
  s->ng = ng;
  /* the quantized tensor is the final form: at most one value per centroid (<= k distinct) */
  if (s->clustered) drop_cluster(s);
  return 0;
}

/* A quantize-only run on a float32 weight that lies in the mapped input, when nothing needs the
 * float values afterwards (no report, no anchor, weight-only): the parameters come from one
 * read of the mapping and the encoder computes the quantized payload from the mapping too,
 * while the model is saved when the model allows streaming. No copy of the weight is made and
 * the output is byte-identical to the general path. 1 when done, 0 to take the general path,
 * or an error code. */
static int quantize_from_mapping(pctx *c, const mopt_weight *w) {
  const mopt_pass *p = &c->spec->passes[0];
  const void *x = mopt_weight_f32_mapped(c->m, w);
  if (!x) return 0;
  wstate s = {.w = w, .n = (size_t)w->nelem};
  mopt_qlayout l;
  int32_t axis;
  int dyn;
  plan_quantize(c, &s, p, NULL, &l, &axis, &dyn);
  if (dyn) return 0;
  size_t ng = mopt_qlayout_groups(&l);
  float *sc = malloc(ng * sizeof *sc);
  int32_t *zp = malloc(ng * sizeof *zp);
  mopt_qconfig qc = {p->qtype, p->symmetric, p->mse_search};
  int nonfinite = 0;
  int rc = sc && zp ? mopt_quantize_params(x, &l, &qc, sc, zp, &nonfinite) : MOPT_ENOMEM;
  if (!rc && !nonfinite) {           /* NaN/Inf: left as it is, as the general path does */
    int all_zero = 1;
    for (size_t g = 0; g < ng && all_zero; g++) all_zero = zp[g] == 0;
    mopt_qtensor qt = {p->qtype, axis, l.gran == 2 ? l.block_size : 0, NULL, sc,
                       all_zero ? NULL : zp, ng};
    rc = mopt_weight_set_quantized_from(c->m, w, &qt, x, c->diag);
  }
  free(sc);
  free(zp);
  return rc ? rc : 1;
}

static int pass_fp16(wstate *s, char *note) {
  if (s->quantized || s->clustered) {
    drop_quant(s);
    drop_cluster(s);
    note_set(note, "earlier quantized/clustered form stored as float16 values");
  }
  drop_f16(s);
  s->halves = malloc(s->n * sizeof *s->halves);
  if (!s->halves) return MOPT_ENOMEM;
  s->clamped += mopt_fp16_convert(s->vals, s->n, s->halves);
  for (size_t i = 0; i < s->n; i++) s->vals[i] = mopt_f16_to_f32(s->halves[i]);
  s->f16 = 1;
  return 0;
}

static int pass_decompose(pctx *c, wstate *s, size_t pi, char *note) {
  const mopt_pass *p = &c->spec->passes[pi];
  const mopt_weight *w = s->w;
  if (w->ndim != 2 || !w->consumer_op ||
      (strcmp(w->consumer_op, "MatMul") != 0 && strcmp(w->consumer_op, "Gemm") != 0)) {
    note_set(note, "skipped: only 2-D MatMul/Gemm weights are decomposed");
    return 0;
  }
  int trans = w->reduction_axis == 1;           /* Gemm transB: stored [N, K] */
  int64_t r = trans ? w->dims[1] : w->dims[0], cc = trans ? w->dims[0] : w->dims[1];
  float *wc = s->vals;
  if (trans) {
    wc = calloc(s->n, sizeof *wc);
    if (!wc) return MOPT_ENOMEM;
    for (int64_t i = 0; i < r; i++)
      for (int64_t j = 0; j < cc; j++) wc[i * cc + j] = s->vals[j * r + i];
  }
  int64_t rank = 0;
  float *a = NULL, *b = NULL;
  int rc = mopt_svd_lowrank(wc, r, cc, p->energy, p->rank, &rank, &a, &b);
  if (trans) free(wc);
  if (rc == 1) {
    note_set(note, "skipped: the chosen rank would not reduce parameters");
    return 0;
  }
  if (rc) {
    if (rc == MOPT_EINTERNAL)
      return mopt_diag_set(c->diag, rc, w->name, "SVD did not converge");
    return rc;
  }
  drop_quant(s);
  drop_cluster(s);
  drop_f16(s);
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < cc; j++) {
      double acc = 0.0;
      for (int64_t t = 0; t < rank; t++) acc += (double)a[i * rank + t] * b[t * cc + j];
      s->vals[trans ? j * r + i : i * cc + j] = (float)acc;
    }
  s->lowrank = 1;
  s->rank = rank;
  s->lr_r = r;
  s->lr_c = cc;
  s->a = a;
  s->b = b;
  s->pruned = 0;
  return 0;
}

/* Distinct values in x[0..n), by the run's counter (its scratch is reused from tensor to
 * tensor); a one-off count if the counter cannot be had or cannot grow. */
static uint64_t distinct_of(pctx *c, const mopt_f32u *x, size_t n) {
  uint64_t d = 0;
  if (!c->distinct) c->distinct = mopt_distinct_new();
  if (c->distinct && mopt_distinct_count(c->distinct, x, n, &d) == 0) return d;
  return mopt_count_distinct(x, n);
}

/* Distinct values of the current reconstruction, from the structure where there is one (used
 * (group, q) pairs, used table entries, used halves), by sorting the values otherwise. Exact in
 * every case: candidate values are deduplicated as floats. */
static uint64_t state_distinct(pctx *c, const wstate *s) {
  if (s->f16) {
    uint64_t *bits = calloc(65536 / 64, sizeof *bits);
    if (!bits) return distinct_of(c, s->vals, s->n);
    for (size_t i = 0; i < s->n; i++) {
      uint16_t h = s->halves[i] == 0x8000 ? 0 : s->halves[i];
      bits[h >> 6] |= 1ull << (h & 63);
    }
    uint64_t d = 0;
    for (size_t i = 0; i < 65536 / 64; i++) d += (uint64_t)__builtin_popcountll(bits[i]);
    free(bits);
    return d;
  }
  if (s->quantized && s->ng <= s->n / 4) {
    int32_t qmin = 0, qmax = 0;
    mopt_qrange(s->qtype, &qmin, &qmax);
    size_t span = (size_t)(qmax - qmin + 1);
    uint8_t *used = calloc(s->ng * span, 1);
    if (!used) return distinct_of(c, s->vals, s->n);
    const mopt_qlayout *l = &s->ql;
    int64_t nb = l->gran == 2 ? (l->v.dim + l->block_size - 1) / l->block_size : 1;
    size_t e = 0;
    for (int64_t o = 0; o < l->v.outer; o++)
      for (int64_t d = 0; d < l->v.dim; d++)
        for (int64_t i = 0; i < l->v.inner; i++, e++) {
          size_t g = l->gran == 0 ? 0 : l->gran == 1 ? (size_t)d
                                      : (size_t)((o * nb + d / l->block_size) * l->v.inner + i);
          used[g * span + (size_t)(s->q[e] - qmin)] = 1;
        }
    size_t m = 0;
    float *cand = malloc(s->ng * span * sizeof *cand);
    if (!cand) { free(used); return distinct_of(c, s->vals, s->n); }
    for (size_t g = 0; g < s->ng; g++)
      for (size_t q = 0; q < span; q++)
        if (used[g * span + q]) cand[m++] = mopt_dequant1((int32_t)q + qmin, s->scales[g], s->zps[g]);
    uint64_t d = distinct_of(c, cand, m);
    free(cand);
    free(used);
    return d;
  }
  if (s->clustered) {
    size_t nt = s->n_tables * (size_t)s->k;
    uint8_t *used = calloc(nt, 1);
    float *cand = malloc(nt * sizeof *cand);
    if (!used || !cand) { free(used); free(cand); return distinct_of(c, s->vals, s->n); }
    size_t inner = 1;
    if (s->caxis >= 0)
      for (int32_t a = s->caxis + 1; a < s->w->ndim; a++) inner *= (size_t)s->w->dims[a];
    for (size_t i = 0; i < s->n; i++) {
      size_t t = s->caxis < 0 ? 0 : (i / inner) % s->n_tables;
      used[t * (size_t)s->k + s->idx[i]] = 1;
    }
    size_t m = 0;
    for (size_t j = 0; j < nt; j++)
      if (used[j]) cand[m++] = s->table[j];
    uint64_t d = distinct_of(c, cand, m);
    free(cand);
    free(used);
    return d;
  }
  return distinct_of(c, s->vals, s->n);
}

static int run_pass(pctx *c, wstate *s, size_t pi, int global_phase, char *note) {
  const mopt_pass *p = &c->spec->passes[pi];
  if (s->lowrank) {
    note_set(note, "skipped: tensor was decomposed by an earlier pass");
    return 0;
  }
  switch (p->op) {
  case MOPT_PASS_PRUNE: return pass_prune(c, s, pi, global_phase, note);
  case MOPT_PASS_CLUSTER: return pass_cluster(c, s, pi, note);
  case MOPT_PASS_QUANTIZE: return pass_quantize(c, s, pi, note);
  case MOPT_PASS_FP16: return pass_fp16(s, note);
  case MOPT_PASS_DECOMPOSE: return pass_decompose(c, s, pi, note);
  }
  return MOPT_EINVAL;
}


static int decode(pctx *c, const mopt_weight *w, wstate *s, int keep_orig) {
  memset(s, 0, sizeof *s);
  s->w = w;
  s->n = (size_t)w->nelem;
  int rc = mopt_weight_read_f32(c->m, w, &s->vals, c->diag);
  if (rc) return rc;
  for (size_t i = 0; i < s->n; i++)
    if (!isfinite(s->vals[i])) {      /* left as it is: no pass has a meaning for NaN/Inf */
      s->nonfinite_at = i + 1;
      break;
    }
  if (keep_orig && !s->nonfinite_at && (s->orig_mapped = mopt_weight_f32_mapped(c->m, w)))
    return 0;                         /* float32 in the mapping: no copy needed */
  if (keep_orig) {
    s->orig = malloc(s->n * sizeof *s->orig);
    if (!s->orig) { state_free(s); return MOPT_ENOMEM; }
    memcpy(s->orig, s->vals, s->n * sizeof *s->orig);
  }
  return 0;
}

/* Global threshold for pass g: two histogram sweeps over every selected tensor after replaying
 * passes [0, g) (thresholds of earlier global prunes are already known). */
static int global_threshold(pctx *c, mopt_weight *ws, size_t nw, size_t g) {
  uint64_t *h = calloc(65536, sizeof *h);
  if (!h) return MOPT_ENOMEM;
  uint64_t total = 0, below_hi = 0, below_lo = 0, nz = 0;
  uint32_t top = 0;
  int rc = 0;
  uint64_t saved_ties[MOPT_MAX_PASSES];
  for (int sweep = 0; sweep < 2 && !rc; sweep++) {
    memcpy(saved_ties, c->ties, sizeof saved_ties);
    for (size_t i = 0; i < nw && !rc; i++) {
      if (!selected(c->spec, &ws[i])) continue;
      if ((rc = report_progress(c, "prune"))) break;
      wstate s;
      if ((rc = decode(c, &ws[i], &s, 0))) break;
      if (s.nonfinite_at) { state_free(&s); continue; }
      for (size_t p = 0; p < g && !rc; p++) rc = run_pass(c, &s, p, 1, NULL);
      if (!rc && !s.lowrank) {
        if (sweep == 0) { mopt_abs_hist_hi(s.vals, s.n, h); total += s.n; }
        else mopt_abs_hist_lo(s.vals, s.n, top, h);
      }
      state_free(&s);
    }
    memcpy(c->ties, saved_ties, sizeof saved_ties);
    if (rc) break;
    if (sweep == 0) {
      double t = nearbyint(c->spec->passes[g].sparsity * (double)total);
      nz = t >= (double)total ? total : (uint64_t)t;
      if (nz == 0) break;
      top = mopt_kth_pick(h, nz - 1, &below_hi);
      memset(h, 0, 65536 * sizeof *h);
    } else {
      uint32_t low = mopt_kth_pick(h, nz - 1 - below_hi, &below_lo);
      c->thr[g] = top << 16 | low;
      c->ties[g] = nz - below_hi - below_lo;
    }
  }
  if (!rc && nz == 0) { c->thr[g] = 0; c->ties[g] = 0; }
  free(h);
  return rc;
}

/* float16/bfloat16 weights are rebuilt in float32 and Cast back to their own type in front of
 * the consumer, so statistics are taken on the values rounded to that type: a malloc'd copy, or
 * NULL when the weight's type holds float32 values exactly (float32, double) or on ENOMEM. */
static float *consumer_view(const wstate *s) {
  int32_t dt = s->w->dtype;
  if (dt != MOPT_DT_FLOAT16 && dt != MOPT_DT_BFLOAT16) return NULL;
  float *v = malloc(s->n * sizeof *v);
  if (!v) return NULL;
  for (size_t i = 0; i < s->n; i++)
    v[i] = dt == MOPT_DT_FLOAT16 ? mopt_f16_to_f32(mopt_f32_to_f16(s->vals[i]))
                                 : mopt_bf16_to_f32(mopt_f32_to_bf16(s->vals[i]));
  return v;
}

/* ---------------------------------------------------------------- encode ---- */

static uint64_t bits_bytes(uint64_t n, int bits) { return (n * (uint64_t)bits + 7) / 8; }

static int encode(pctx *c, wstate *s, mopt_rep_tensor *rt) {
  const mopt_weight *w = s->w;
  int rc = 0;
  uint64_t before = bits_bytes(s->n, mopt_dtype_bits(w->dtype));
  const char *enc = "unchanged";
  char dt_after[16];
  snprintf(dt_after, sizeof dt_after, "%s", mopt_dtype_name(w->dtype));
  uint64_t after = before;
  if (s->lowrank) {
    rc = mopt_weight_set_lowrank(c->m, w, s->rank, s->a, s->b, c->diag);
    enc = "lowrank";
    after = (uint64_t)(s->rank * (s->lr_r + s->lr_c)) * 4;
    snprintf(dt_after, sizeof dt_after, "float32");
  } else if (s->quantized && s->dynamic) {
    int all_zero = 1;
    for (size_t g = 0; g < s->ng && all_zero; g++) all_zero = s->zps[g] == 0;
    mopt_qtensor qt = {s->qtype, s->qaxis, 0, s->q, s->scales, all_zero ? NULL : s->zps, s->ng};
    rc = mopt_int_set_dynamic(c->m, w, &qt, c->diag);
    enc = "dynamic";
    after = s->n + s->ng * 4 + (all_zero ? 0 : s->ng);
    snprintf(dt_after, sizeof dt_after, "%s", mopt_dtype_name(s->qtype));
  } else if (s->quantized) {
    int all_zero = 1;
    for (size_t g = 0; g < s->ng && all_zero; g++) all_zero = s->zps[g] == 0;
    mopt_qtensor qt = {s->qtype, s->qaxis, s->ql.gran == 2 ? s->ql.block_size : 0, s->q,
                       s->scales, all_zero ? NULL : s->zps, s->ng};
    rc = mopt_weight_set_quantized(c->m, w, &qt, c->diag);
    enc = "quantized";
    int bits = mopt_dtype_bits(s->qtype);
    after = bits_bytes(s->n, bits) + s->ng * 4 + (all_zero ? 0 : bits_bytes(s->ng, bits));
    snprintf(dt_after, sizeof dt_after, "%s", mopt_dtype_name(s->qtype));
  } else if (s->clustered && s->cenc == MOPT_ENC_LUT) {
    mopt_lut lut = {s->k, s->caxis, s->n_tables, s->idx, s->table};
    rc = mopt_weight_set_lut(c->m, w, &lut, c->diag);
    enc = "lut";
    int four = s->k <= 16 && c->opset >= 21;
    after = (four ? (s->n + 1) / 2 : s->n) + s->n_tables * (uint64_t)s->k * 4;
    snprintf(dt_after, sizeof dt_after, four ? "uint4" : "uint8");
  } else if (s->f16) {
    rc = mopt_weight_set_f16(c->m, w, s->halves, c->diag);
    enc = "float16";
    after = s->n * 2;
    snprintf(dt_after, sizeof dt_after, "float16");
  } else if (s->touched) {                     /* same decision with or without a report */
    rc = mopt_weight_set_dense(c->m, w, s->vals, c->diag);
    enc = "dense";
  }
  if (rc == MOPT_EUNSUPPORTED && (s->quantized || s->clustered)) {
    /* The model's opset cannot express the compact form (opset < 7 has no numpy-style
     * Mul/Add): keep the optimized values, stored dense, so the output still loads. */
    rc = mopt_weight_set_dense(c->m, w, s->vals, c->diag);
    enc = "dense";
    after = before;
    snprintf(dt_after, sizeof dt_after, "%s", mopt_dtype_name(w->dtype));
    if (rt && rt->n_passes)
      note_set(rt->passes[rt->n_passes - 1].note,
               "opset too old for the compact encoding: values stored dense");
  }
  if (rc) return rc;
  if (rt) {
    rt->encoding = enc;
    rt->bytes_before = before;
    rt->bytes_after = after;
    snprintf(rt->dtype_after, sizeof rt->dtype_after, "%s", dt_after);
  }
  return 0;
}

/* Statistics of the input taken on a second thread while the passes run: the input's compressed
 * size, and the distinct-value count of every selected float32 weight that lies in the mapped
 * input. Both read only the mapped file, which nothing writes; on 2 cores they take 1.7 s of a
 * 410 MB int8 job off the main thread. Tensors without such a mapping are counted inline. */
/* One selected float32 weight in the mapping, counted by the thread. */
typedef struct before_item {
  const mopt_f32u *src;      /* its mapped values, or NULL: counted inline */
  size_t n;
  uint64_t dist;             /* distinct values (valid after the join) */
} before_item;

typedef struct before_bg {
  const uint8_t *file;       /* the model's file bytes, or NULL (measured as serialized) */
  size_t file_len;
  size_t nw;                 /* items: one per weight of the model's list, or 0 */
  before_item *items;
  uint64_t zbytes;
  atomic_int stop;
  pthread_t th;
  int threaded;
} before_bg;

#define DIST_UNKNOWN UINT64_MAX       /* the thread could not count it (no memory): count inline */
#define NOT_DEFERRED SIZE_MAX

static void before_bg_run(before_bg *b) {
  if (b->file) b->zbytes = mopt_zstd_size(b->file, b->file_len, &b->stop);
  for (size_t i = 0; i < b->nw; i++) b->items[i].dist = DIST_UNKNOWN;
  mopt_distinct *dc = mopt_distinct_new();
  for (size_t i = 0; dc && i < b->nw && !atomic_load(&b->stop); i++) {
    before_item *it = &b->items[i];
    if (it->src && mopt_distinct_count(dc, it->src, it->n, &it->dist) != 0) it->dist = DIST_UNKNOWN;
  }
  mopt_distinct_free(dc);
}

static void *before_bg_thread(void *arg) {
  before_bg_run(arg);
  return NULL;
}

/* Starts the thread for m's selected weights (report runs only). NULL when there is nothing to
 * do off the main thread or no memory: everything is then measured inline. */
static before_bg *before_bg_start(pctx *c, const mopt_weight *ws, size_t nw) {
  before_bg *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  int any = mopt_model_file_view(c->m, &b->file, &b->file_len);
  /* without passes the count before is also the count after, needed at once */
  if (c->spec->n_passes > 0 && nw && (b->items = calloc(nw, sizeof *b->items))) {
    b->nw = nw;
    for (size_t i = 0; i < nw; i++)
      if (selected(c->spec, &ws[i]) && (b->items[i].src = mopt_weight_f32_mapped(c->m, &ws[i]))) {
        b->items[i].n = (size_t)ws[i].nelem;
        any = 1;
      }
  }
  atomic_init(&b->stop, 0);
  if (any) b->threaded = pthread_create(&b->th, NULL, before_bg_thread, b) == 0;
  if (!b->threaded) {                /* no thread: nothing is deferred */
    free(b->items);
    free(b);
    return NULL;
  }
  return b;
}

/* 1 when weight i's count before comes from the thread. */
static int before_bg_has(const before_bg *b, size_t i) {
  return b && i < b->nw && b->items[i].src != NULL;
}

static void before_bg_join(before_bg *b) {
  if (b->threaded) pthread_join(b->th, NULL);
  b->threaded = 0;
}

/* Stops the thread at once if it still runs, and frees; NULL is fine. */
static void before_bg_free(before_bg *b) {
  if (!b) return;
  atomic_store(&b->stop, 1);
  before_bg_join(b);
  free(b->items);
  free(b);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* ---------------------------------------------------------------- driver ---- */

int mopt_pipeline_run(mopt_model *m, const mopt_spec *spec, mopt_progress_fn progress,
                      void *progress_ctx, char **report_json, mopt_diag *diag) {
  if (report_json) *report_json = NULL;
  if (!m || !spec) return MOPT_EINVAL;
  double t_start = now_ms();
  int rc = validate_spec(spec, diag);
  if (rc) return rc;
  mopt_report rep;
  memset(&rep, 0, sizeof rep);
  before_bg *bg = NULL;               /* statistics of the input, taken meanwhile */
  size_t *rt_deferred = NULL;         /* per report tensor: the weight whose count before comes
                                         from bg, or NOT_DEFERRED */
  pctx c = {.m = m, .spec = spec, .progress = progress, .progress_ctx = progress_ctx,
            .diag = diag, .want_report = report_json != NULL, .rep = &rep};
  mopt_model_info info;
  if ((rc = mopt_model_info_get(m, &info))) return rc;
  c.opset = info.default_opset;
  int wants_anchor = 0;
  for (size_t p = 0; p < spec->n_passes; p++) wants_anchor |= spec->passes[p].use_anchor != 0;
  if (wants_anchor && spec->anchor_path) {
    if ((rc = mopt_model_load_file(spec->anchor_path, NULL, &c.anchor, diag))) {
      if (diag) snprintf(diag->where, sizeof diag->where, "anchor");
      return rc;
    }
  }
  mopt_weight *ws = NULL;
  size_t nw = 0;
  if ((rc = mopt_model_weights(m, &ws, &nw))) goto out;
  rep.weights_total = nw;
  rep.seed = spec->seed;
  rep.n_passes = spec->n_passes;
  for (size_t p = 0; p < spec->n_passes; p++) rep.p[p].op = spec->passes[p].op;
  size_t nsel = 0;
  for (size_t i = 0; i < nw; i++) nsel += selected(spec, &ws[i]);
  if (c.want_report) bg = before_bg_start(&c, ws, nw);
  if (bg && bg->file) rep.file_bytes_before = bg->file_len;
  else if (c.want_report &&
           (rc = mopt_model_measure(m, &rep.file_bytes_before, &rep.zstd_bytes_before)))
    goto out;

  c.units_total = (double)nsel * (double)(spec->n_passes + 1);

  for (size_t g = 0; g < spec->n_passes; g++) {
    const mopt_pass *p = &spec->passes[g];
    if (p->op == MOPT_PASS_PRUNE && p->pattern == MOPT_PRUNE_UNSTRUCTURED &&
        p->scope == MOPT_SCOPE_GLOBAL) {
      double t0 = now_ms();
      if ((rc = global_threshold(&c, ws, nw, g))) goto out;
      rep.p[g].time_ms += now_ms() - t0;
    }
  }

  if (c.want_report && nsel) {
    rep.t = calloc(nsel, sizeof *rep.t);
    rt_deferred = malloc(nsel * sizeof *rt_deferred);
    if (!rep.t || !rt_deferred) { rc = MOPT_ENOMEM; goto out; }
    rep.cap_tensors = nsel;
  }

  const mopt_pass *p0 = &spec->passes[0];
  int from_mapping = !c.want_report && spec->n_passes == 1 && p0->op == MOPT_PASS_QUANTIZE &&
                     !(p0->use_anchor && c.anchor) && p0->activations != MOPT_ACT_DYNAMIC &&
                     c.opset >= 7;
  for (size_t i = 0; i < nw; i++) {
    const mopt_weight *w = &ws[i];
    if (!selected(spec, w)) continue;
    if (from_mapping) {
      if ((rc = report_progress(&c, "quantize"))) goto out;
      double t0 = now_ms();
      rc = quantize_from_mapping(&c, w);
      rep.p[0].time_ms += now_ms() - t0;
      if (rc < 0) {
        if (diag && !diag->msg[0])
          mopt_diag_set(diag, rc, w->name, "quantize failed: %s", mopt_strerror(rc));
        goto out;
      }
      if (rc == 1) {
        rc = 0;
        c.units_done += (double)(spec->n_passes + 1);
        continue;
      }
    }
    wstate s;
    double t0 = now_ms();
    if ((rc = decode(&c, w, &s, c.want_report))) goto out;
    rep.decode_ms += now_ms() - t0;
    mopt_rep_tensor *rt = NULL;
    uint64_t dist = 0;
    double sp = 0.0;
    if (c.want_report) {
      rt = &rep.t[rep.n_tensors++];
      rt->name = dup_or_null(w->name);
      rt->graph_path = dup_or_null(w->graph_path);
      rt->consumer = dup_or_null(w->consumer_op);
      rt->loc = w->loc;
      rt->ndim = w->ndim;
      memcpy(rt->dims, w->dims, sizeof rt->dims);
      rt->dtype_before = w->dtype;
      rt->n_passes = spec->n_passes;
      /* a tensor with NaN/Inf reports its count before as its count after, needed now */
      int defer = before_bg_has(bg, i) && !s.nonfinite_at;
      rt_deferred[rep.n_tensors - 1] = defer ? i : NOT_DEFERRED;
      if (!defer) dist = rt->distinct_before = distinct_of(&c, s.vals, s.n);
      sp = rt->sparsity_before = mopt_sparsity(s.vals, s.n);
    }
    if (s.nonfinite_at) {
      for (size_t p = 0; rt && p < spec->n_passes; p++) {
        snprintf(rt->passes[p].note, sizeof rt->passes[p].note,
                 "skipped: NaN/Inf at element %zu", s.nonfinite_at - 1);
        rt->passes[p].sparsity = sp;
        rt->passes[p].distinct = dist;
      }
      if (rt) {
        rt->sparsity = sp;
        rt->distinct = dist;
        rt->snr_db = 999.0;
        rt->encoding = "unchanged";
        rt->bytes_before = rt->bytes_after = bits_bytes(s.n, mopt_dtype_bits(w->dtype));
        snprintf(rt->dtype_after, sizeof rt->dtype_after, "%s", mopt_dtype_name(w->dtype));
        rep.weight_bytes_before += rt->bytes_before;
        rep.weight_bytes_after += rt->bytes_after;
      }
      c.units_done += (double)(spec->n_passes + 1);
      state_free(&s);
      continue;
    }
    for (size_t p = 0; p < spec->n_passes; p++) {
      if ((rc = report_progress(&c, mopt_pass_name(spec->passes[p].op)))) { state_free(&s); goto out; }
      char *note = rt ? rt->passes[p].note : NULL;
      t0 = now_ms();
      rc = run_pass(&c, &s, p, 0, note);
      rep.p[p].time_ms += now_ms() - t0;
      if (rc) {
        if (diag && !diag->msg[0]) mopt_diag_set(diag, rc, w->name, "%s failed: %s",
                                                 mopt_pass_name(spec->passes[p].op), mopt_strerror(rc));
        state_free(&s);
        goto out;
      }
      c.units_done += 1.0;
      if (rt) {
        mopt_rep_pass *rp = &rep.p[p];
        rp->tensors++;
        rp->elems += s.n;
        rp->zeros_before += (uint64_t)nearbyint(sp * (double)s.n);
        rp->distinct_before += dist;
        float *view = consumer_view(&s);        /* half types: what the consumer sees */
        sp = mopt_sparsity(view ? view : s.vals, s.n);
        dist = view ? distinct_of(&c, view, s.n) : state_distinct(&c, &s);
        free(view);
        rp->zeros_after += (uint64_t)nearbyint(sp * (double)s.n);
        rp->distinct_after += dist;
        rt->passes[p].sparsity = sp;
        rt->passes[p].distinct = dist;
      }
    }
    if ((rc = report_progress(&c, "encode"))) { state_free(&s); goto out; }
    if (rt) {
      rt->sparsity = sp;
      rt->distinct = dist;
      float *view = consumer_view(&s);
      rt->snr_db = mopt_snr_db(s.orig_mapped ? s.orig_mapped : s.orig, view ? view : s.vals, s.n,
                               &rt->max_abs_err);
      free(view);
      rt->fp16_clamped = s.clamped;
      rt->rank = s.lowrank ? s.rank : 0;
      rt->anchored = s.anchored;
    }
    t0 = now_ms();
    /* peak memory: the float copies are not needed by the structured encoders */
    free(s.orig);
    s.orig = NULL;
    /* (below opset 7 the dense fallback of encode() still needs them) */
    if ((s.lowrank || s.quantized || (s.clustered && s.cenc == MOPT_ENC_LUT) || s.f16) &&
        c.opset >= 7) {
      free(s.vals);
      s.vals = NULL;
    }
    rc = encode(&c, &s, rt);
    rep.encode_ms += now_ms() - t0;
    state_free(&s);
    if (rc) goto out;
    c.units_done += 1.0;
    if (rt) {
      rep.weight_bytes_before += rt->bytes_before;
      rep.weight_bytes_after += rt->bytes_after;
    }
  }
  if ((rc = mopt_model_prune_unused(m))) {
    mopt_diag_set(diag, rc, "model", "removing unused tensors failed: %s", mopt_strerror(rc));
    goto out;
  }
  if (c.want_report) {
    double t0 = now_ms();
    if ((rc = mopt_model_measure(m, &rep.file_bytes_after, &rep.zstd_bytes_after))) goto out;
    rep.save_ms = now_ms() - t0;
    if (bg) {                          /* what the second thread measured */
      before_bg_join(bg);
      if (bg->file) rep.zstd_bytes_before = bg->zbytes;
      for (size_t t = 0; t < rep.n_tensors; t++) {
        if (rt_deferred[t] == NOT_DEFERRED) continue;
        const before_item *it = &bg->items[rt_deferred[t]];
        uint64_t d = it->dist;
        if (d == DIST_UNKNOWN) d = distinct_of(&c, it->src, it->n);
        rep.t[t].distinct_before = d;
        rep.p[0].distinct_before += d;   /* deferred only when there are passes */
      }
    }
    rep.total_ms = now_ms() - t_start;
    rep.peak_rss_bytes = mopt_peak_rss();
    *report_json = mopt_report_json(&rep);
    if (!*report_json) rc = MOPT_ENOMEM;
  }
  if (progress && !rc && progress(1.0, "encode", progress_ctx) != 0)
    rc = mopt_diag_set(diag, MOPT_ECANCELLED, "done", "cancelled");
out:
  before_bg_free(bg);                 /* an error or a cancel does not wait for it */
  free(rt_deferred);
  mopt_report_free(&rep);
  mopt_model_destroy(c.anchor);
  mopt_distinct_free(c.distinct);
  return rc;
}
