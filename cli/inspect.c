/* inspect.c — `mopt inspect MODEL [--json]`: every weight tensor (name, location, consumer,
 * shape, dtype, bytes), op types by count, opset imports and model totals.
 *
 * Trade-off: the table is printed with fixed column widths computed from the data (one extra
 * pass over the weight list) so long names stay readable without wrapping logic.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct opc { char *op; uint64_t n; } opc;
typedef struct opcs { opc *v; size_t n, cap; int oom; } opcs;

static void collect_op(const char *op, uint64_t count, void *ctx) {
  opcs *c = ctx;
  if (c->oom) return;
  if (c->n == c->cap) {
    size_t nc = c->cap ? c->cap * 2 : 32;
    opc *nv = realloc(c->v, nc * sizeof *nv);
    if (!nv) { c->oom = 1; return; }
    c->v = nv;
    c->cap = nc;
  }
  c->v[c->n].op = strdup(op);
  c->v[c->n].n = count;
  if (!c->v[c->n].op) { c->oom = 1; return; }
  c->n++;
}

static int cmp_opc(const void *a, const void *b) {
  const opc *x = a, *y = b;
  if (x->n != y->n) return x->n > y->n ? -1 : 1;
  return strcmp(x->op, y->op);
}

static uint64_t wbytes(const mopt_weight *w) {
  return (w->nelem * (uint64_t)mopt_dtype_bits(w->dtype) + 7) / 8;
}

static void shape_str(const mopt_weight *w, char *buf, size_t cap) {
  size_t o = (size_t)snprintf(buf, cap, "[");
  for (int32_t d = 0; d < w->ndim && o < cap; d++)
    o += (size_t)snprintf(buf + o, cap - o, "%s%lld", d ? "," : "", (long long)w->dims[d]);
  if (o < cap) snprintf(buf + o, cap - o, "]");
}

int cli_inspect(int argc, char **argv) {
  const char *path = NULL;
  int json = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--json")) json = 1;
    else if (argv[i][0] == '-' || path) {
      fprintf(stderr, "mopt inspect: unexpected argument '%s'\nusage: mopt inspect MODEL [--json]\n",
              argv[i]);
      return CLI_USAGE;
    } else path = argv[i];
  }
  if (!path) {
    fprintf(stderr, "usage: mopt inspect MODEL [--json]\n");
    return CLI_USAGE;
  }
  mopt_diag d;
  memset(&d, 0, sizeof d);
  mopt_model *m = NULL;
  int rc = mopt_model_load_file(path, NULL, &m, &d);
  if (rc) {
    fprintf(stderr, "mopt inspect: %s: %s (%s)\n", path, d.msg[0] ? d.msg : mopt_strerror(rc), d.where);
    return cli_exit_code(rc);
  }
  mopt_model_info info;
  mopt_weight *ws = NULL;
  size_t nw = 0;
  opcs ops = {0};
  if ((rc = mopt_model_info_get(m, &info)) || (rc = mopt_model_weights(m, &ws, &nw))) {
    fprintf(stderr, "mopt inspect: %s: %s\n", path, mopt_strerror(rc));
    mopt_model_destroy(m);
    return cli_exit_code(rc);
  }
  mopt_model_op_counts(m, collect_op, &ops);
  if (ops.n) qsort(ops.v, ops.n, sizeof *ops.v, cmp_opc);
  char shape[160];
  if (json) {
    json_t *root = json_object(), *tens = json_array(), *opo = json_object(), *ops_o = json_object();
    for (size_t i = 0; i < nw; i++) {
      const mopt_weight *w = &ws[i];
      json_t *dims = json_array();
      for (int32_t k = 0; k < w->ndim; k++) json_array_append_new(dims, json_integer(w->dims[k]));
      json_array_append_new(tens, json_pack(
          "{s:s, s:s, s:s, s:o, s:o, s:s, s:I, s:I, s:b, s:i, s:i}",
          "name", w->name, "graph_path", w->graph_path,
          "location", w->loc == MOPT_LOC_CONSTANT ? "constant" : "initializer",
          "consumer", w->consumer_op ? json_string(w->consumer_op) : json_null(),
          "shape", dims, "dtype", mopt_dtype_name(w->dtype), "elements", (json_int_t)w->nelem,
          "bytes", (json_int_t)wbytes(w), "is_weight", w->is_weight,
          "channel_axis", w->channel_axis, "reduction_axis", w->reduction_axis));
    }
    for (size_t i = 0; i < info.n_opsets && i < 16; i++)
      json_object_set_new(opo, info.opsets[i].domain, json_integer(info.opsets[i].version));
    for (size_t i = 0; i < ops.n; i++) json_object_set_new(ops_o, ops.v[i].op, json_integer((json_int_t)ops.v[i].n));
    json_object_set_new(root, "ir_version", json_integer(info.ir_version));
    json_object_set_new(root, "opsets", opo);
    json_object_set_new(root, "producer", json_string(info.producer_name));
    json_object_set_new(root, "node_count", json_integer((json_int_t)info.node_count));
    json_object_set_new(root, "weight_count", json_integer((json_int_t)info.weight_count));
    json_object_set_new(root, "param_count", json_integer((json_int_t)info.param_count));
    json_object_set_new(root, "weight_bytes", json_integer((json_int_t)info.weight_bytes));
    json_object_set_new(root, "ops", ops_o);
    json_object_set_new(root, "tensors", tens);
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    if (s) { puts(s); free(s); }
    json_decref(root);
  } else {
    int wn = 4, wc = 8, ws_ = 5;
    for (size_t i = 0; i < nw; i++) {
      int l = (int)strlen(ws[i].name);
      if (l > wn) wn = l;
      if (ws[i].consumer_op && (int)strlen(ws[i].consumer_op) > wc) wc = (int)strlen(ws[i].consumer_op);
      shape_str(&ws[i], shape, sizeof shape);
      if ((int)strlen(shape) > ws_) ws_ = (int)strlen(shape);
    }
    if (wn > 60) wn = 60;
    printf("model %s: ir_version %lld, producer %s %s, %llu nodes\n", path,
           (long long)info.ir_version, info.producer_name[0] ? info.producer_name : "-",
           info.producer_version, (unsigned long long)info.node_count);
    printf("opsets:");
    for (size_t i = 0; i < info.n_opsets && i < 16; i++)
      printf(" %s=%lld", info.opsets[i].domain[0] ? info.opsets[i].domain : "ai.onnx",
             (long long)info.opsets[i].version);
    printf("\n\n%-*s  %-11s  %-*s  %-*s  %-8s  %12s  %s\n", wn, "name", "location", wc, "consumer",
           ws_, "shape", "dtype", "bytes", "graph");
    for (size_t i = 0; i < nw; i++) {
      const mopt_weight *w = &ws[i];
      shape_str(w, shape, sizeof shape);
      printf("%-*s  %-11s  %-*s  %-*s  %-8s  %12llu  %s%s\n", wn, w->name,
             w->loc == MOPT_LOC_CONSTANT ? "constant" : "initializer", wc,
             w->consumer_op ? w->consumer_op : "-", ws_, shape, mopt_dtype_name(w->dtype),
             (unsigned long long)wbytes(w), w->graph_path, w->is_weight ? "" : "  (not a weight)");
    }
    printf("\n%llu tensors, %llu parameters, %llu bytes\n\nops:\n",
           (unsigned long long)info.weight_count, (unsigned long long)info.param_count,
           (unsigned long long)info.weight_bytes);
    for (size_t i = 0; i < ops.n; i++) printf("  %-24s %llu\n", ops.v[i].op, (unsigned long long)ops.v[i].n);
  }
  for (size_t i = 0; i < ops.n; i++) free(ops.v[i].op);
  free(ops.v);
  mopt_model_destroy(m);
  return CLI_OK;
}
