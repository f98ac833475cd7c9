/* optimize.c — `mopt optimize IN -o OUT`: run a spec file, or a spec built from flags for the
 * common cases, and write the optimized model (and optionally the JSON report).
 *
 * Trade-off: flags cover one pass of each kind in a fixed order (decompose, prune, cluster,
 * quantize, fp16); anything else (several passes of a kind, another order) takes a spec file,
 * which goes through the same parser the daemon uses.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static int usage_err(const char *fmt, const char *arg) {
  fprintf(stderr, "mopt optimize: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nusage: mopt optimize IN -o OUT [--spec SPEC.json] [--report REPORT.json] "
                  "[--anchor OLD_OUTPUT.onnx] [pass flags]; see `mopt help`\n");
  return CLI_USAGE;
}

static int num_arg(const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
  *out = v;
  return 0;
}

static int qtype_of(const char *s) {
  if (!strcmp(s, "int8")) return MOPT_DT_INT8;
  if (!strcmp(s, "uint8")) return MOPT_DT_UINT8;
  if (!strcmp(s, "int4")) return MOPT_DT_INT4;
  if (!strcmp(s, "uint4")) return MOPT_DT_UINT4;
  return -1;
}

static int parse_pattern(const char *s, mopt_pass *p) {
  int a, b;
  char tail;
  if (!strcmp(s, "unstructured")) { p->pattern = MOPT_PRUNE_UNSTRUCTURED; return 0; }
  if (!strcmp(s, "channel") || !strcmp(s, "channel:l2")) {
    p->pattern = MOPT_PRUNE_CHANNEL; p->channel_norm = 2; return 0;
  }
  if (!strcmp(s, "channel:l1")) { p->pattern = MOPT_PRUNE_CHANNEL; p->channel_norm = 1; return 0; }
  if (sscanf(s, "block:%dx%d%c", &a, &b, &tail) == 2 && a > 0 && b > 0 && a <= 64 && b <= 64) {
    p->pattern = MOPT_PRUNE_BLOCK; p->block_r = a; p->block_c = b; return 0;
  }
  if (sscanf(s, "%d:%d%c", &a, &b, &tail) == 2 && a >= 0 && b > a && b <= 64) {
    p->pattern = MOPT_PRUNE_NM; p->nm_n = a; p->nm_m = b;
    p->sparsity = 1.0 - (double)a / (double)b;
    return 0;
  }
  return -1;
}

typedef struct bar { int tty; int last_pct; char step[32]; } bar;

static int on_progress(double f, const char *step, void *ctx) {
  bar *b = ctx;
  if (!b->tty) return 0;
  int pct = (int)(f * 100.0 + 0.5);
  if (pct == b->last_pct && !strcmp(step, b->step)) return 0;
  b->last_pct = pct;
  snprintf(b->step, sizeof b->step, "%s", step);
  char fill[41];
  int k = pct * 40 / 100;
  for (int i = 0; i < 40; i++) fill[i] = i < k ? '#' : '.';
  fill[40] = 0;
  fprintf(stderr, "\r[%s] %3d%% %-10s", fill, pct, step);
  fflush(stderr);
  return 0;
}

int cli_optimize(int argc, char **argv) {
  const char *in = NULL, *out = NULL, *specp = NULL, *repp = NULL, *spec_anchor = NULL;
  mopt_spec spec;
  mopt_spec_init(&spec);
  int q = -1, per_channel = 0, block = 0, sym = -1, mse = 0, fp16 = 0, global = 0;
  int cluster = 0, cl_pc = 0, cl_dense = 0, cl_init = MOPT_INIT_KMEANSPP, rank = 0;
  double prune = -1.0, energy = 0.0, v;
  const char *pattern = NULL;
  int pass_flags = 0, rc = CLI_OK;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!val) { rc = usage_err("%s needs a value", a); goto done; } i++; } while (0)
    if (!strcmp(a, "-o") || !strcmp(a, "--output")) { NEED(); out = val; }
    else if (!strcmp(a, "--spec")) { NEED(); specp = val; }
    else if (!strcmp(a, "--report")) { NEED(); repp = val; }
    else if (!strcmp(a, "--anchor")) { NEED(); spec_anchor = val; }
    else if (!strcmp(a, "--quantize")) {
      NEED(); pass_flags++;
      if ((q = qtype_of(val)) < 0) { rc = usage_err("--quantize takes int8|uint8|int4|uint4, not '%s'", val); goto done; }
    } else if (!strcmp(a, "--per-channel")) { per_channel = 1; pass_flags++; }
    else if (!strcmp(a, "--block")) {
      NEED(); pass_flags++;
      if (num_arg(val, 16, 256, &v) || (int)v != v || ((int)v & ((int)v - 1))) {
        rc = usage_err("--block takes 16, 32, 64, 128 or 256, not '%s'", val); goto done;
      }
      block = (int)v;
    } else if (!strcmp(a, "--symmetric")) { sym = 1; pass_flags++; }
    else if (!strcmp(a, "--affine")) { sym = 0; pass_flags++; }
    else if (!strcmp(a, "--mse")) { mse = 1; pass_flags++; }
    else if (!strcmp(a, "--prune")) {
      NEED(); pass_flags++;
      if (num_arg(val, 0.0, 0.999999, &prune)) { rc = usage_err("--prune takes a sparsity in [0, 1), not '%s'", val); goto done; }
    } else if (!strcmp(a, "--pattern")) { NEED(); pattern = val; pass_flags++; }
    else if (!strcmp(a, "--global")) { global = 1; pass_flags++; }
    else if (!strcmp(a, "--cluster")) {
      NEED(); pass_flags++;
      if (num_arg(val, 2, 256, &v) || (int)v != v) { rc = usage_err("--cluster takes 2..256, not '%s'", val); goto done; }
      cluster = (int)v;
    } else if (!strcmp(a, "--cluster-init")) {
      NEED(); pass_flags++;
      if (!strcmp(val, "kmeans++")) cl_init = MOPT_INIT_KMEANSPP;
      else if (!strcmp(val, "linear")) cl_init = MOPT_INIT_LINEAR;
      else if (!strcmp(val, "density")) cl_init = MOPT_INIT_DENSITY;
      else if (!strcmp(val, "random")) cl_init = MOPT_INIT_RANDOM;
      else { rc = usage_err("--cluster-init takes kmeans++|linear|density|random, not '%s'", val); goto done; }
    } else if (!strcmp(a, "--cluster-per-channel")) { cl_pc = 1; pass_flags++; }
    else if (!strcmp(a, "--cluster-dense")) { cl_dense = 1; pass_flags++; }
    else if (!strcmp(a, "--fp16")) { fp16 = 1; pass_flags++; }
    else if (!strcmp(a, "--decompose")) {
      NEED(); pass_flags++;
      if (num_arg(val, 1e-6, 1.0, &energy)) { rc = usage_err("--decompose takes an energy in (0, 1], not '%s'", val); goto done; }
    } else if (!strcmp(a, "--rank")) {
      NEED(); pass_flags++;
      if (num_arg(val, 1, 65536, &v) || (int)v != v) { rc = usage_err("--rank takes a positive integer, not '%s'", val); goto done; }
      rank = (int)v;
    } else if (!strcmp(a, "--include") || !strcmp(a, "--exclude")) {
      NEED(); pass_flags++;
      int inc = a[2] == 'i';
      size_t *cnt = inc ? &spec.n_include : &spec.n_exclude;
      if (*cnt >= MOPT_MAX_GLOBS) { rc = usage_err("too many %s patterns", a); goto done; }
      char *g = strdup(val);
      if (!g) { rc = CLI_INTERNAL; goto done; }
      (inc ? spec.include : spec.exclude)[(*cnt)++] = g;
    } else if (!strcmp(a, "--min-elements")) {
      NEED(); pass_flags++;
      if (num_arg(val, 0, 1e15, &v) || floor(v) != v) { rc = usage_err("--min-elements takes a count, not '%s'", val); goto done; }
      spec.min_elements = (uint64_t)v;
    } else if (!strcmp(a, "--seed")) {
      NEED(); pass_flags++;
      char *end;
      errno = 0;
      unsigned long long s = strtoull(val, &end, 10);
      if (errno || *end || end == val || val[0] == '-') { rc = usage_err("--seed takes an unsigned integer, not '%s'", val); goto done; }
      spec.seed = s;
    } else if (a[0] == '-' && a[1]) { rc = usage_err("unknown option '%s'", a); goto done; }
    else if (!in) in = a;
    else { rc = usage_err("unexpected argument '%s'", a); goto done; }
#undef NEED
  }
  if (!in || !out) { rc = usage_err("%s", "IN and -o OUT are required"); goto done; }
  if (specp && pass_flags) { rc = usage_err("%s", "--spec and pass/selection flags are exclusive"); goto done; }
  if (fp16 && (q >= 0 || cluster)) { rc = usage_err("%s", "--fp16 cannot be combined with --quantize or --cluster"); goto done; }
  if ((per_channel || block || sym >= 0 || mse) && q < 0) { rc = usage_err("%s", "--per-channel/--block/--symmetric/--affine/--mse need --quantize"); goto done; }
  if (per_channel && block) { rc = usage_err("%s", "--per-channel and --block are exclusive"); goto done; }
  if (prune < 0 && (global || (pattern && (!strchr(pattern, ':') || !strncmp(pattern, "block", 5) ||
                                          !strncmp(pattern, "channel", 7))))) {
    rc = usage_err("%s", "--global and unstructured/block/channel patterns need --prune S");
    goto done;
  }
  if ((cl_pc || cl_dense || cl_init != MOPT_INIT_KMEANSPP) && !cluster) { rc = usage_err("%s", "--cluster-* flags need --cluster K"); goto done; }
  if (energy > 0 && rank) { rc = usage_err("%s", "--decompose and --rank are exclusive"); goto done; }

  mopt_diag d;
  memset(&d, 0, sizeof d);
  int err = 0;
  if (specp) {
    if ((err = cli_load_spec(specp, &spec, &d))) {
      fprintf(stderr, "mopt optimize: spec %s: %s (%s)\n", specp, d.msg[0] ? d.msg : mopt_strerror(err), d.where);
      rc = cli_exit_code(err);
      goto done;
    }
  } else {
    mopt_pass *p;
    if (energy > 0 || rank) {
      p = &spec.passes[spec.n_passes++];
      p->op = MOPT_PASS_DECOMPOSE;
      p->energy = rank ? 0.0 : energy;
      p->rank = rank;
    }
    if (prune >= 0 || pattern) {
      p = &spec.passes[spec.n_passes++];
      p->op = MOPT_PASS_PRUNE;
      p->sparsity = prune >= 0 ? prune : 0.0;
      p->pattern = MOPT_PRUNE_UNSTRUCTURED;
      if (pattern && parse_pattern(pattern, p)) { rc = usage_err("--pattern takes unstructured|N:M|block:RxC|channel[:l1|:l2], not '%s'", pattern); goto done; }
      p->scope = global ? MOPT_SCOPE_GLOBAL : MOPT_SCOPE_PER_TENSOR;
      if (global && p->pattern != MOPT_PRUNE_UNSTRUCTURED) { rc = usage_err("%s", "--global applies to unstructured pruning only"); goto done; }
    }
    if (cluster) {
      p = &spec.passes[spec.n_passes++];
      p->op = MOPT_PASS_CLUSTER;
      p->clusters = cluster;
      p->init = (mopt_cluster_init)cl_init;
      p->granularity = cl_pc ? MOPT_GRAN_PER_CHANNEL : MOPT_GRAN_PER_TENSOR;
      p->encoding = cl_dense ? MOPT_ENC_DENSE : MOPT_ENC_LUT;
    }
    if (q >= 0) {
      p = &spec.passes[spec.n_passes++];
      p->op = MOPT_PASS_QUANTIZE;
      p->qtype = q;
      p->granularity = block ? MOPT_GRAN_BLOCK : per_channel ? MOPT_GRAN_PER_CHANNEL : MOPT_GRAN_PER_TENSOR;
      p->block_size = block;
      p->symmetric = sym >= 0 ? sym : (q == MOPT_DT_INT8 || q == MOPT_DT_INT4);
      p->mse_search = mse;
    }
    if (fp16) spec.passes[spec.n_passes++].op = MOPT_PASS_FP16;
  }
  /* --anchor MODEL: every prune/cluster/quantize pass reuses that model's parameters */
  spec.anchor_path = spec_anchor;
  for (size_t i = 0; spec_anchor && i < spec.n_passes; i++)
    spec.passes[i].use_anchor = spec.passes[i].op == MOPT_PASS_PRUNE ||
                                spec.passes[i].op == MOPT_PASS_CLUSTER ||
                                spec.passes[i].op == MOPT_PASS_QUANTIZE;

  bar b = {isatty(2), -1, ""};
  mopt_model *m = NULL;
  if ((err = mopt_model_load_file(in, NULL, &m, &d))) {
    fprintf(stderr, "mopt optimize: %s: %s (%s)\n", in, d.msg[0] ? d.msg : mopt_strerror(err), d.where);
    rc = cli_exit_code(err);
    goto done;
  }
  mopt_model_allow_streaming(m, MOPT_STREAM_MIN_BYTES);  /* the model is only saved after the passes */
  char *report = NULL;
  err = mopt_pipeline_run(m, &spec, on_progress, &b, repp ? &report : NULL, &d);
  if (b.tty) fputc('\n', stderr);
  if (!err) err = mopt_model_save_file(m, out, &d);
  if (!err && repp) err = cli_write_file_atomic(repp, report, strlen(report), &d);
  free(report);
  mopt_model_destroy(m);
  if (err) {
    fprintf(stderr, "mopt optimize: %s: %s (%s)\n", mopt_errcode(err), d.msg[0] ? d.msg : mopt_strerror(err), d.where);
    rc = cli_exit_code(err);
    goto done;
  }
  if (b.tty) {
    struct stat si, so;
    if (stat(in, &si) == 0 && stat(out, &so) == 0)
      fprintf(stderr, "wrote %s: %lld bytes (input %lld bytes, %.1f%%)\n", out, (long long)so.st_size,
              (long long)si.st_size, si.st_size ? 100.0 * (double)so.st_size / (double)si.st_size : 0.0);
  }
done:
  mopt_spec_free(&spec);
  return rc;
}
