/* job_spec.c — parse, validate and normalize an optimization job spec (JSON → mopt_spec).
 *
 * The spec is small and its schema is fixed, so validation is table-driven per pass op: each op
 * lists the keys it accepts, every other key is refused with its JSON pointer. Nesting is bounded
 * by a linear bracket scan before jansson sees the text, so a 10,000-deep document never reaches
 * jansson's recursive parser.
 *
 * Trade-off: the canonical output is emitted by hand (keys written in sorted order, doubles in
 * their shortest round-trip form) rather than via json_dumps, whose fixed 17-digit doubles would
 * turn 0.1 into 0.10000000000000001. Hand emission ties the writer to the schema, which is the
 * same table the parser uses, so both change together.
 */
#include "job_spec.h"
#include "sb.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPEC_MAX_DEPTH 64
#define SPEC_MAX_GLOB_LEN 256
#define SPEC_MAX_RANK 65536
#define SPEC_MAX_NM 64
#define SPEC_MAX_BLOCK 64

/* ------------------------------------------------------------ small helpers ---- */

typedef struct enum_row { const char *name; int value; } enum_row;

static const enum_row op_names[] = {
  {"prune", MOPT_PASS_PRUNE}, {"cluster", MOPT_PASS_CLUSTER}, {"quantize", MOPT_PASS_QUANTIZE},
  {"fp16", MOPT_PASS_FP16}, {"decompose", MOPT_PASS_DECOMPOSE}, {NULL, 0}};
static const enum_row scope_names[] = {
  {"per_tensor", MOPT_SCOPE_PER_TENSOR}, {"global", MOPT_SCOPE_GLOBAL}, {NULL, 0}};
static const enum_row norm_names[] = {{"l1", 1}, {"l2", 2}, {NULL, 0}};
static const enum_row init_names[] = {
  {"kmeans++", MOPT_INIT_KMEANSPP}, {"linear", MOPT_INIT_LINEAR},
  {"density", MOPT_INIT_DENSITY}, {"random", MOPT_INIT_RANDOM}, {NULL, 0}};
static const enum_row cluster_gran_names[] = {
  {"per_tensor", MOPT_GRAN_PER_TENSOR}, {"per_channel", MOPT_GRAN_PER_CHANNEL}, {NULL, 0}};
static const enum_row quant_gran_names[] = {
  {"per_tensor", MOPT_GRAN_PER_TENSOR}, {"per_channel", MOPT_GRAN_PER_CHANNEL},
  {"block", MOPT_GRAN_BLOCK}, {NULL, 0}};
static const enum_row enc_names[] = {{"lut", MOPT_ENC_LUT}, {"dense", MOPT_ENC_DENSE}, {NULL, 0}};
static const enum_row dtype_names[] = {
  {"int8", MOPT_DT_INT8}, {"uint8", MOPT_DT_UINT8}, {"int4", MOPT_DT_INT4},
  {"uint4", MOPT_DT_UINT4}, {NULL, 0}};
static const enum_row act_names[] = {
  {"none", MOPT_ACT_NONE}, {"dynamic", MOPT_ACT_DYNAMIC}, {NULL, 0}};

static const char *enum_name(const enum_row *t, int v) {
  for (; t->name; t++)
    if (t->value == v) return t->name;
  return "?";
}

/* "a, b or c" list of a table's names, for messages. */
static void enum_list(const enum_row *t, char *buf, size_t n) {
  size_t used = 0;
  buf[0] = 0;
  for (const enum_row *r = t; r->name; r++) {
    const char *sep = r == t ? "" : (r[1].name ? ", " : " or ");
    int k = snprintf(buf + used, n - used, "%s\"%s\"", sep, r->name);
    if (k < 0 || (size_t)k >= n - used) break;
    used += (size_t)k;
  }
}

/* Appends "/token" (RFC 6901 escaped) to a JSON pointer. */
static void ptr_join(char *out, size_t n, const char *base, const char *token) {
  size_t used = (size_t)snprintf(out, n, "%s/", base);
  for (const char *p = token; *p && used + 3 < n; p++) {
    if (*p == '~') { out[used++] = '~'; out[used++] = '0'; }
    else if (*p == '/') { out[used++] = '~'; out[used++] = '1'; }
    else out[used++] = *p;
  }
  if (used < n) out[used] = 0;
  else out[n - 1] = 0;
}

static void ptr_index(char *out, size_t n, const char *base, size_t i) {
  int k = snprintf(out, n, "%s/%zu", base, i);
  if (k < 0 || (size_t)k >= n) out[n - 1] = 0;   /* truncated pointers still name the area */
}

static const char *type_name(const json_t *v) {
  switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
  }
  return "?";
}

/* Refuses any key of obj not in allowed (NULL-terminated). */
static int check_keys(const json_t *obj, const char *const *allowed, const char *base,
                      const char *what, mopt_diag *diag) {
  const char *key;
  json_t *val;
  json_object_foreach((json_t *)obj, key, val) {
    int ok = 0;
    for (const char *const *a = allowed; *a; a++)
      if (strcmp(*a, key) == 0) { ok = 1; break; }
    if (!ok) {
      char where[256], list[200];
      size_t used = 0;
      list[0] = 0;
      for (const char *const *a = allowed; *a; a++) {
        int k = snprintf(list + used, sizeof list - used, "%s%s", a == allowed ? "" : ", ", *a);
        if (k < 0 || (size_t)k >= sizeof list - used) break;
        used += (size_t)k;
      }
      ptr_join(where, sizeof where, base, key);
      return mopt_diag_set(diag, MOPT_ESPEC, where, "unknown key \"%.64s\" in %s (allowed: %s)",
                           key, what, list);
    }
  }
  return 0;
}

/* Reads an optional enum-valued string. *present = 1 when the key exists. */
static int get_enum(const json_t *obj, const char *key, const enum_row *t, const char *base,
                    int *out, int *present, mopt_diag *diag) {
  json_t *v = json_object_get(obj, key);
  char where[256];
  if (present) *present = v != NULL;
  if (!v) return 0;
  ptr_join(where, sizeof where, base, key);
  char list[200];
  enum_list(t, list, sizeof list);
  if (!json_is_string(v))
    return mopt_diag_set(diag, MOPT_ESPEC, where, "%s must be a string (one of %s), got %s", key,
                         list, type_name(v));
  const char *s = json_string_value(v);
  for (const enum_row *r = t; r->name; r++)
    if (strcmp(r->name, s) == 0) { *out = r->value; return 0; }
  return mopt_diag_set(diag, MOPT_ESPEC, where, "%s \"%.64s\" is not one of %s", key, s, list);
}

static int get_bool(const json_t *obj, const char *key, const char *base, int32_t *out,
                    mopt_diag *diag) {
  json_t *v = json_object_get(obj, key);
  if (!v) return 0;
  if (!json_is_boolean(v)) {
    char where[256];
    ptr_join(where, sizeof where, base, key);
    return mopt_diag_set(diag, MOPT_ESPEC, where, "%s must be true or false, got %s", key,
                         type_name(v));
  }
  *out = json_is_true(v) ? 1 : 0;
  return 0;
}

/* Integer in [lo, hi]; reals (even 16.0) are refused so a spec means one thing. */
static int get_int(const json_t *obj, const char *key, const char *base, int64_t lo, int64_t hi,
                   int64_t *out, int *present, mopt_diag *diag) {
  json_t *v = json_object_get(obj, key);
  if (present) *present = v != NULL;
  if (!v) return 0;
  char where[256];
  ptr_join(where, sizeof where, base, key);
  if (!json_is_integer(v))
    return mopt_diag_set(diag, MOPT_ESPEC, where, "%s must be an integer in [%lld, %lld], got %s",
                         key, (long long)lo, (long long)hi, type_name(v));
  json_int_t x = json_integer_value(v);
  if (x < lo || x > hi)
    return mopt_diag_set(diag, MOPT_ESPEC, where, "%s must be in [%lld, %lld], got %lld", key,
                         (long long)lo, (long long)hi, (long long)x);
  *out = (int64_t)x;
  return 0;
}

/* Number (integer or real) with an interval; lo_open/hi_open make the bound exclusive. */
static int get_number(const json_t *obj, const char *key, const char *base, double lo, int lo_open,
                      double hi, int hi_open, double *out, int *present, mopt_diag *diag) {
  json_t *v = json_object_get(obj, key);
  if (present) *present = v != NULL;
  if (!v) return 0;
  char where[256];
  ptr_join(where, sizeof where, base, key);
  if (!json_is_number(v))
    return mopt_diag_set(diag, MOPT_ESPEC, where, "%s must be a number in %c%g, %g%c, got %s", key,
                         lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']', type_name(v));
  double x = json_number_value(v);
  if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || (hi_open ? x >= hi : x > hi))
    return mopt_diag_set(diag, MOPT_ESPEC, where, "%s must be in %c%g, %g%c, got %.17g", key,
                         lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']', x);
  *out = x;
  return 0;
}

/* "N:M" → n, m. Returns 1 on a well-formed pair. */
static int parse_pair(const char *s, char sep, int32_t *a, int32_t *b) {
  char *end;
  if (!isdigit((unsigned char)s[0])) return 0;
  long x = strtol(s, &end, 10);
  if (*end != sep || !isdigit((unsigned char)end[1]) || x > 100000) return 0;
  long y = strtol(end + 1, &end, 10);
  if (*end != 0 || y > 100000) return 0;
  *a = (int32_t)x;
  *b = (int32_t)y;
  return 1;
}

/* ------------------------------------------------------------ pass parsers ---- */

static int parse_prune(const json_t *o, const char *base, mopt_pass *p, mopt_diag *diag) {
  static const char *const keys[] = {"op", "sparsity", "pattern", "norm", "scope", "anchor", NULL};
  int rc = check_keys(o, keys, base, "a prune pass", diag);
  if (rc) return rc;
  char where[256];
  p->pattern = MOPT_PRUNE_UNSTRUCTURED;
  json_t *pat = json_object_get(o, "pattern");
  if (pat) {
    ptr_join(where, sizeof where, base, "pattern");
    if (!json_is_string(pat))
      return mopt_diag_set(diag, MOPT_ESPEC, where,
                           "pattern must be a string (\"unstructured\", \"N:M\", \"block:RxC\" or "
                           "\"channel\"), got %s", type_name(pat));
    const char *s = json_string_value(pat);
    if (strcmp(s, "unstructured") == 0) {
      p->pattern = MOPT_PRUNE_UNSTRUCTURED;
    } else if (strcmp(s, "channel") == 0) {
      p->pattern = MOPT_PRUNE_CHANNEL;
    } else if (strncmp(s, "block:", 6) == 0) {
      int32_t r, c;
      if (!parse_pair(s + 6, 'x', &r, &c))
        return mopt_diag_set(diag, MOPT_ESPEC, where,
                             "pattern \"%.64s\" is not \"block:RxC\" with integer R and C", s);
      if (r < 1 || c < 1 || r > SPEC_MAX_BLOCK || c > SPEC_MAX_BLOCK || r * c < 2)
        return mopt_diag_set(diag, MOPT_ESPEC, where,
                             "block %dx%d: R and C must be in 1..%d and R*C >= 2", r, c,
                             SPEC_MAX_BLOCK);
      p->pattern = MOPT_PRUNE_BLOCK;
      p->block_r = r;
      p->block_c = c;
    } else if (isdigit((unsigned char)s[0])) {
      int32_t n, m;
      if (!parse_pair(s, ':', &n, &m))
        return mopt_diag_set(diag, MOPT_ESPEC, where,
                             "pattern \"%.64s\" is not \"N:M\" with integer N and M", s);
      if (m < 2 || m > SPEC_MAX_NM || n < 1 || n >= m)
        return mopt_diag_set(diag, MOPT_ESPEC, where,
                             "pattern %d:%d: need 1 <= N < M <= %d (keep N of every M)", n, m,
                             SPEC_MAX_NM);
      p->pattern = MOPT_PRUNE_NM;
      p->nm_n = n;
      p->nm_m = m;
    } else {
      return mopt_diag_set(diag, MOPT_ESPEC, where,
                           "pattern \"%.64s\" is not one of \"unstructured\", \"N:M\" (e.g. "
                           "\"2:4\"), \"block:RxC\" (e.g. \"block:4x1\") or \"channel\"", s);
    }
  }
  int present = 0;
  double sp = 0.5;
  rc = get_number(o, "sparsity", base, 0.0, 0, 1.0, 1, &sp, &present, diag);
  if (rc) return rc;
  if (p->pattern == MOPT_PRUNE_NM) {
    double implied = 1.0 - (double)p->nm_n / (double)p->nm_m;
    if (present && fabs(sp - implied) > 1e-9) {
      ptr_join(where, sizeof where, base, "sparsity");
      return mopt_diag_set(diag, MOPT_ESPEC, where,
                           "pattern %d:%d implies sparsity %g, got %g (omit sparsity)", p->nm_n,
                           p->nm_m, implied, sp);
    }
    sp = implied;
  }
  p->sparsity = sp;
  int norm = 1;
  rc = get_enum(o, "norm", norm_names, base, &norm, &present, diag);
  if (rc) return rc;
  if (present && p->pattern != MOPT_PRUNE_CHANNEL) {
    ptr_join(where, sizeof where, base, "norm");
    return mopt_diag_set(diag, MOPT_ESPEC, where, "norm applies only to pattern \"channel\"");
  }
  p->channel_norm = p->pattern == MOPT_PRUNE_CHANNEL ? norm : 0;
  int scope = MOPT_SCOPE_PER_TENSOR;
  rc = get_enum(o, "scope", scope_names, base, &scope, NULL, diag);
  if (rc) return rc;
  p->scope = (mopt_prune_scope)scope;
  return 0;
}

static int parse_cluster(const json_t *o, const char *base, mopt_pass *p, mopt_diag *diag) {
  static const char *const keys[] = {"op", "clusters", "init", "granularity", "encoding", "anchor",
                                     NULL};
  int rc = check_keys(o, keys, base, "a cluster pass", diag);
  if (rc) return rc;
  int64_t k = 16;
  rc = get_int(o, "clusters", base, 2, 256, &k, NULL, diag);
  if (rc) return rc;
  p->clusters = (int32_t)k;
  int v = MOPT_INIT_KMEANSPP;
  if ((rc = get_enum(o, "init", init_names, base, &v, NULL, diag))) return rc;
  p->init = (mopt_cluster_init)v;
  v = MOPT_GRAN_PER_TENSOR;
  if ((rc = get_enum(o, "granularity", cluster_gran_names, base, &v, NULL, diag))) return rc;
  p->granularity = (mopt_gran)v;
  v = MOPT_ENC_LUT;
  if ((rc = get_enum(o, "encoding", enc_names, base, &v, NULL, diag))) return rc;
  p->encoding = (mopt_cluster_enc)v;
  return 0;
}

static int parse_quantize(const json_t *o, const char *base, mopt_pass *p, mopt_diag *diag) {
  static const char *const keys[] = {"op", "dtype", "granularity", "block_size", "symmetric",
                                     "mse", "activations", "anchor", NULL};
  int rc = check_keys(o, keys, base, "a quantize pass", diag);
  if (rc) return rc;
  char where[256];
  int v = MOPT_DT_INT8;
  if ((rc = get_enum(o, "dtype", dtype_names, base, &v, NULL, diag))) return rc;
  p->qtype = v;
  v = MOPT_GRAN_PER_CHANNEL;
  if ((rc = get_enum(o, "granularity", quant_gran_names, base, &v, NULL, diag))) return rc;
  p->granularity = (mopt_gran)v;
  int present = 0;
  int64_t bs = 32;
  rc = get_int(o, "block_size", base, 16, 256, &bs, &present, diag);
  if (rc) return rc;
  if (present) {
    ptr_join(where, sizeof where, base, "block_size");
    if (p->granularity != MOPT_GRAN_BLOCK)
      return mopt_diag_set(diag, MOPT_ESPEC, where,
                           "block_size applies only to granularity \"block\"");
    if (bs & (bs - 1))
      return mopt_diag_set(diag, MOPT_ESPEC, where,
                           "block_size must be a power of two (16, 32, 64, 128 or 256), got %lld",
                           (long long)bs);
  }
  p->block_size = p->granularity == MOPT_GRAN_BLOCK ? (int32_t)bs : 0;
  int is_signed = p->qtype == MOPT_DT_INT8 || p->qtype == MOPT_DT_INT4;
  p->symmetric = is_signed ? 1 : 0;
  if ((rc = get_bool(o, "symmetric", base, &p->symmetric, diag))) return rc;
  p->mse_search = 0;
  if ((rc = get_bool(o, "mse", base, &p->mse_search, diag))) return rc;
  v = MOPT_ACT_NONE;
  if ((rc = get_enum(o, "activations", act_names, base, &v, NULL, diag))) return rc;
  p->activations = (mopt_act_mode)v;
  if (p->activations == MOPT_ACT_DYNAMIC && p->qtype != MOPT_DT_INT8 && p->qtype != MOPT_DT_UINT8) {
    ptr_join(where, sizeof where, base, "activations");
    return mopt_diag_set(diag, MOPT_ESPEC, where,
                         "activations \"dynamic\" needs dtype \"int8\" or \"uint8\", got \"%s\"",
                         enum_name(dtype_names, p->qtype));
  }
  if (p->activations == MOPT_ACT_DYNAMIC && p->granularity == MOPT_GRAN_BLOCK) {
    ptr_join(where, sizeof where, base, "activations");
    return mopt_diag_set(diag, MOPT_ESPEC, where,
                         "activations \"dynamic\" needs granularity \"per_tensor\" or "
                         "\"per_channel\" (integer matrix products have no block form)");
  }
  return 0;
}

static int parse_fp16(const json_t *o, const char *base, mopt_pass *p, mopt_diag *diag) {
  static const char *const keys[] = {"op", NULL};
  (void)p;
  return check_keys(o, keys, base, "an fp16 pass", diag);
}

static int parse_decompose(const json_t *o, const char *base, mopt_pass *p, mopt_diag *diag) {
  static const char *const keys[] = {"op", "energy", "rank", NULL};
  int rc = check_keys(o, keys, base, "a decompose pass", diag);
  if (rc) return rc;
  int has_e = 0, has_r = 0;
  double e = 0.95;
  int64_t r = 0;
  if ((rc = get_number(o, "energy", base, 0.0, 1, 1.0, 0, &e, &has_e, diag))) return rc;
  if ((rc = get_int(o, "rank", base, 1, SPEC_MAX_RANK, &r, &has_r, diag))) return rc;
  if (has_e && has_r) {
    char where[256];
    ptr_join(where, sizeof where, base, "rank");
    return mopt_diag_set(diag, MOPT_ESPEC, where, "give either energy or rank, not both");
  }
  p->energy = has_r ? 0.0 : e;
  p->rank = has_r ? (int32_t)r : 0;
  return 0;
}

typedef int (*pass_parser)(const json_t *o, const char *base, mopt_pass *p, mopt_diag *diag);
static const pass_parser pass_parsers[] = {
  [MOPT_PASS_PRUNE] = parse_prune,
  [MOPT_PASS_CLUSTER] = parse_cluster,
  [MOPT_PASS_QUANTIZE] = parse_quantize,
  [MOPT_PASS_FP16] = parse_fp16,
  [MOPT_PASS_DECOMPOSE] = parse_decompose,
};
_Static_assert(sizeof pass_parsers / sizeof pass_parsers[0] == MOPT_PASS_DECOMPOSE + 1,
               "one parser per pass op");

/* ------------------------------------------------------------ select ---- */

static int glob_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads a glob list into list/n (sorted, duplicates dropped: the lists are sets). */
static int parse_globs(const json_t *sel, const char *key, const char *base, char **list,
                       size_t *n, mopt_diag *diag) {
  json_t *arr = json_object_get(sel, key);
  char where[256];
  if (!arr) return 0;
  ptr_join(where, sizeof where, base, key);
  if (!json_is_array(arr))
    return mopt_diag_set(diag, MOPT_ESPEC, where, "%s must be an array of glob strings, got %s",
                         key, type_name(arr));
  if (json_array_size(arr) > MOPT_MAX_GLOBS)
    return mopt_diag_set(diag, MOPT_ESPEC, where, "%s has %zu patterns, at most %d allowed", key,
                         json_array_size(arr), MOPT_MAX_GLOBS);
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) {
    char w2[256];
    ptr_index(w2, sizeof w2, where, i);
    if (!json_is_string(v))
      return mopt_diag_set(diag, MOPT_ESPEC, w2, "glob must be a string, got %s", type_name(v));
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (len == 0 || len > SPEC_MAX_GLOB_LEN)
      return mopt_diag_set(diag, MOPT_ESPEC, w2, "glob must be 1..%d characters, got %zu",
                           SPEC_MAX_GLOB_LEN, len);
    for (size_t k = 0; k < len; k++)
      if ((unsigned char)s[k] < 0x20 || s[k] == 0x7f)
        return mopt_diag_set(diag, MOPT_ESPEC, w2, "glob contains a control character at %zu", k);
    int dup = 0;
    for (size_t k = 0; k < *n; k++)
      if (strcmp(list[k], s) == 0) dup = 1;
    if (dup) continue;
    char *copy = strdup(s);
    if (!copy) return mopt_diag_set(diag, MOPT_ENOMEM, where, "out of memory");
    list[(*n)++] = copy;
  }
  qsort(list, *n, sizeof list[0], glob_cmp);
  return 0;
}

static int parse_select(const json_t *root, mopt_spec *spec, mopt_diag *diag) {
  static const char *const keys[] = {"include", "exclude", "min_elements", NULL};
  json_t *sel = json_object_get(root, "select");
  int rc;
  if (sel) {
    if (!json_is_object(sel))
      return mopt_diag_set(diag, MOPT_ESPEC, "/select", "select must be an object, got %s",
                           type_name(sel));
    if ((rc = check_keys(sel, keys, "/select", "select", diag))) return rc;
    if ((rc = parse_globs(sel, "include", "/select", spec->include, &spec->n_include, diag)))
      return rc;
    if ((rc = parse_globs(sel, "exclude", "/select", spec->exclude, &spec->n_exclude, diag)))
      return rc;
    int64_t me = 1024;
    if ((rc = get_int(sel, "min_elements", "/select", 0, INT64_MAX, &me, NULL, diag))) return rc;
    spec->min_elements = (uint64_t)me;
  } else {
    spec->min_elements = 1024;
  }
  if (spec->n_include == 0) {
    /* No include list means every tensor; make that explicit so the normalized text of "{}" and
     * of {"select":{"include":["*"]}} is the same job key. */
    spec->include[0] = strdup("*");
    if (!spec->include[0]) return mopt_diag_set(diag, MOPT_ENOMEM, "/select", "out of memory");
    spec->n_include = 1;
  }
  return 0;
}

/* ------------------------------------------------------------ nesting scan ---- */

/* Linear scan: refuses nesting deeper than SPEC_MAX_DEPTH before any recursive parser runs.
 * Strings are skipped (brackets inside them do not count). */
static int depth_scan(const char *text, size_t len, mopt_diag *diag) {
  int depth = 0, in_str = 0, esc = 0;
  size_t line = 1, col = 0;
  for (size_t i = 0; i < len; i++) {
    char c = text[i];
    col++;
    if (c == '\n') { line++; col = 0; }
    if (in_str) {
      if (esc) esc = 0;
      else if (c == '\\') esc = 1;
      else if (c == '"') in_str = 0;
      continue;
    }
    if (c == '"') in_str = 1;
    else if (c == '[' || c == '{') {
      if (++depth > SPEC_MAX_DEPTH) {
        char where[64];
        snprintf(where, sizeof where, "line %zu column %zu", line, col);
        return mopt_diag_set(diag, MOPT_EJSON, where, "JSON nested deeper than %d levels",
                             SPEC_MAX_DEPTH);
      }
    } else if (c == ']' || c == '}') {
      if (depth > 0) depth--;
    }
  }
  return 0;
}

/* ------------------------------------------------------------ canonical writer ---- */

/* Shortest decimal that reads back as exactly x (deterministic across runs). */
static void sb_double(mopt_sb *b, double x) {
  char tmp[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, x);
    if (strtod(tmp, NULL) == x) break;
  }
  mopt_sb_puts(b, tmp);
}
/* ,"key": — keys are written in sorted order by the callers. */
static void sb_key(mopt_sb *b, int *first, const char *key) {
  if (!*first) mopt_sb_puts(b, ",");
  *first = 0;
  mopt_sb_json_str(b, key);
  mopt_sb_puts(b, ":");
}

static void write_pass(mopt_sb *b, const mopt_pass *p) {
  int f = 1;
  mopt_sb_puts(b, "{");
  if (p->op == MOPT_PASS_QUANTIZE) {      /* "activations" < "anchor" < every other key */
    sb_key(b, &f, "activations");
    mopt_sb_json_str(b, enum_name(act_names, p->activations));
  }
  if (p->use_anchor) {
    sb_key(b, &f, "anchor");
    mopt_sb_json_str(b, p->anchor);
  }
  switch (p->op) {
    case MOPT_PASS_PRUNE:
      if (p->pattern == MOPT_PRUNE_CHANNEL) {
        sb_key(b, &f, "norm");
        mopt_sb_json_str(b, enum_name(norm_names, p->channel_norm));
      }
      sb_key(b, &f, "op");
      mopt_sb_puts(b, "\"prune\"");
      sb_key(b, &f, "pattern");
      if (p->pattern == MOPT_PRUNE_UNSTRUCTURED) mopt_sb_puts(b, "\"unstructured\"");
      else if (p->pattern == MOPT_PRUNE_CHANNEL) mopt_sb_puts(b, "\"channel\"");
      else if (p->pattern == MOPT_PRUNE_NM) mopt_sb_printf(b, "\"%d:%d\"", p->nm_n, p->nm_m);
      else mopt_sb_printf(b, "\"block:%dx%d\"", p->block_r, p->block_c);
      sb_key(b, &f, "scope");
      mopt_sb_json_str(b, enum_name(scope_names, p->scope));
      sb_key(b, &f, "sparsity");
      sb_double(b, p->sparsity);
      break;
    case MOPT_PASS_CLUSTER:
      sb_key(b, &f, "clusters");
      mopt_sb_printf(b, "%d", p->clusters);
      sb_key(b, &f, "encoding");
      mopt_sb_json_str(b, enum_name(enc_names, p->encoding));
      sb_key(b, &f, "granularity");
      mopt_sb_json_str(b, enum_name(cluster_gran_names, p->granularity));
      sb_key(b, &f, "init");
      mopt_sb_json_str(b, enum_name(init_names, p->init));
      sb_key(b, &f, "op");
      mopt_sb_puts(b, "\"cluster\"");
      break;
    case MOPT_PASS_QUANTIZE:
      if (p->granularity == MOPT_GRAN_BLOCK) {
        sb_key(b, &f, "block_size");
        mopt_sb_printf(b, "%d", p->block_size);
      }
      sb_key(b, &f, "dtype");
      mopt_sb_json_str(b, enum_name(dtype_names, p->qtype));
      sb_key(b, &f, "granularity");
      mopt_sb_json_str(b, enum_name(quant_gran_names, p->granularity));
      sb_key(b, &f, "mse");
      mopt_sb_puts(b, p->mse_search ? "true" : "false");
      sb_key(b, &f, "op");
      mopt_sb_puts(b, "\"quantize\"");
      sb_key(b, &f, "symmetric");
      mopt_sb_puts(b, p->symmetric ? "true" : "false");
      break;
    case MOPT_PASS_FP16:
      sb_key(b, &f, "op");
      mopt_sb_puts(b, "\"fp16\"");
      break;
    case MOPT_PASS_DECOMPOSE:
      if (p->rank == 0) {
        sb_key(b, &f, "energy");
        sb_double(b, p->energy);
      }
      sb_key(b, &f, "op");
      mopt_sb_puts(b, "\"decompose\"");
      if (p->rank > 0) {
        sb_key(b, &f, "rank");
        mopt_sb_printf(b, "%d", p->rank);
      }
      break;
  }
  mopt_sb_puts(b, "}");
}

static void write_globs(mopt_sb *b, char *const *list, size_t n) {
  mopt_sb_puts(b, "[");
  for (size_t i = 0; i < n; i++) {
    if (i) mopt_sb_puts(b, ",");
    mopt_sb_json_str(b, list[i]);
  }
  mopt_sb_puts(b, "]");
}

static char *write_spec(const mopt_spec *s) {
  mopt_sb b = {0};
  mopt_sb_puts(&b, "{\"passes\":[");
  for (size_t i = 0; i < s->n_passes; i++) {
    if (i) mopt_sb_puts(&b, ",");
    write_pass(&b, &s->passes[i]);
  }
  mopt_sb_printf(&b, "],\"seed\":%llu,\"select\":{\"exclude\":", (unsigned long long)s->seed);
  write_globs(&b, s->exclude, s->n_exclude);
  mopt_sb_puts(&b, ",\"include\":");
  write_globs(&b, s->include, s->n_include);
  mopt_sb_printf(&b, ",\"min_elements\":%llu}}", (unsigned long long)s->min_elements);
  if (b.oom) { free(b.buf); return NULL; }
  return b.buf;
}

/* ------------------------------------------------------------ entry point ---- */

static int valid_model_id(const char *s) {
  if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != 71) return 0;
  for (const char *p = s + 7; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
  return 1;
}

/* "anchor" of a prune/cluster/quantize pass: a model id or "release:{name}/{channel}". Every
 * pass that names one must name the same one (a job runs against one anchor model). */
static int parse_anchor(const json_t *po, const char *base, mopt_pass *p, const mopt_spec *spec,
                        mopt_diag *diag) {
  json_t *a = json_object_get(po, "anchor");
  if (!a) return 0;
  char where[96];
  snprintf(where, sizeof where, "%s/anchor", base);
  const char *s = json_is_string(a) ? json_string_value(a) : NULL;
  const char *slash = s && strncmp(s, "release:", 8) == 0 ? strchr(s + 8, '/') : NULL;
  int ok = s && (valid_model_id(s) ||
                 (slash && slash > s + 8 && slash[1] && !strchr(slash + 1, '/') &&
                  slash - (s + 8) < 128 && strlen(slash + 1) < 64));
  if (!ok)
    return mopt_diag_set(diag, MOPT_ESPEC, where,
                         "anchor must be a model id \"sha256:<64 lowercase hex>\" or "
                         "\"release:{name}/{channel}\"");
  for (size_t i = 0; i < spec->n_passes; i++)
    if (spec->passes[i].use_anchor && strcmp(spec->passes[i].anchor, s) != 0)
      return mopt_diag_set(diag, MOPT_ESPEC, where,
                           "anchor \"%.80s\" differs from pass %zu's \"%.80s\": a job has one "
                           "anchor model", s, i, spec->passes[i].anchor);
  p->use_anchor = 1;
  snprintf(p->anchor, sizeof p->anchor, "%s", s);
  return 0;
}

static int parse_root(const json_t *root, int require_model, mopt_spec *spec, char **model_out,
                      mopt_diag *diag) {
  static const char *const keys[] = {"model", "passes", "select", "seed", NULL};
  int rc;
  if (!json_is_object(root))
    return mopt_diag_set(diag, MOPT_ESPEC, "", "a job spec must be a JSON object, got %s",
                         type_name(root));
  if ((rc = check_keys(root, keys, "", "the job spec", diag))) return rc;

  json_t *model = json_object_get(root, "model");
  if (!model && require_model)
    return mopt_diag_set(diag, MOPT_ESPEC, "/model",
                         "missing required key \"model\" (\"sha256:<64 hex>\", a model id)");
  if (model) {
    if (!json_is_string(model) || !valid_model_id(json_string_value(model)))
      return mopt_diag_set(diag, MOPT_ESPEC, "/model",
                           "model must be a model id \"sha256:<64 lowercase hex>\"");
    if (model_out) {
      *model_out = strdup(json_string_value(model));
      if (!*model_out) return mopt_diag_set(diag, MOPT_ENOMEM, "/model", "out of memory");
    }
  }

  json_t *passes = json_object_get(root, "passes");
  if (passes) {
    if (!json_is_array(passes))
      return mopt_diag_set(diag, MOPT_ESPEC, "/passes", "passes must be an array, got %s",
                           type_name(passes));
    if (json_array_size(passes) > MOPT_MAX_PASSES)
      return mopt_diag_set(diag, MOPT_ESPEC, "/passes", "%zu passes, at most %d allowed",
                           json_array_size(passes), MOPT_MAX_PASSES);
    size_t i;
    json_t *po;
    int storage_pass = -1;   /* index of the quantize/fp16 pass: each picks the stored dtype */
    json_array_foreach(passes, i, po) {
      char base[64], where[96];
      ptr_index(base, sizeof base, "/passes", i);
      if (!json_is_object(po))
        return mopt_diag_set(diag, MOPT_ESPEC, base, "a pass must be an object, got %s",
                             type_name(po));
      json_t *op = json_object_get(po, "op");
      snprintf(where, sizeof where, "%s/op", base);
      if (!op)
        return mopt_diag_set(diag, MOPT_ESPEC, where, "missing required key \"op\"");
      int opv = -1;
      if ((rc = get_enum(po, "op", op_names, base, &opv, NULL, diag))) {
        if (json_is_string(op))
          mopt_diag_set(diag, MOPT_ESPEC, where,
                        "unknown pass \"%.64s\"; expected \"prune\", \"cluster\", \"quantize\", "
                        "\"fp16\" or \"decompose\"", json_string_value(op));
        return rc;
      }
      mopt_pass *p = &spec->passes[spec->n_passes];
      memset(p, 0, sizeof *p);
      p->op = (mopt_pass_op)opv;
      if ((rc = pass_parsers[opv](po, base, p, diag))) return rc;
      if ((rc = parse_anchor(po, base, p, spec, diag))) return rc;
      if (opv == MOPT_PASS_QUANTIZE || opv == MOPT_PASS_FP16) {
        if (storage_pass >= 0)
          return mopt_diag_set(diag, MOPT_ESPEC, base,
                               "pass %zu (%s) and pass %d (%s) both choose the stored number "
                               "type; use only one quantize or fp16 pass",
                               i, enum_name(op_names, opv), storage_pass,
                               enum_name(op_names, spec->passes[storage_pass].op));
        storage_pass = (int)i;
      }
      spec->n_passes++;
    }
  }

  if ((rc = parse_select(root, spec, diag))) return rc;
  int64_t seed = 0;
  if ((rc = get_int(root, "seed", "", 0, INT64_MAX, &seed, NULL, diag))) return rc;
  spec->seed = (uint64_t)seed;
  return 0;
}

char *api_spec_normalize(const mopt_spec *spec) { return write_spec(spec); }

int api_spec_parse(const char *text, size_t len, int require_model, mopt_spec *spec,
                   char **model_out, char **normalized, mopt_diag *diag) {
  json_error_t jerr;
  int rc;
  mopt_spec_init(spec);
  /* Start from an empty glob list whatever the core's defaults hold: "include all" is made
   * explicit below, so the parsed struct and the normalized text always agree. */
  mopt_spec_free(spec);
  spec->n_include = spec->n_exclude = 0;
  memset(spec->include, 0, sizeof spec->include);
  memset(spec->exclude, 0, sizeof spec->exclude);
  spec->n_passes = 0;
  if (model_out) *model_out = NULL;
  if (normalized) *normalized = NULL;
  if (!text) return mopt_diag_set(diag, MOPT_EJSON, "line 1 column 0", "empty body");
  if ((rc = depth_scan(text, len, diag))) return rc;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    char where[64];
    snprintf(where, sizeof where, "line %d column %d", jerr.line, jerr.column);
    return mopt_diag_set(diag, MOPT_EJSON, where, "%s", jerr.text);
  }
  rc = parse_root(root, require_model, spec, model_out, diag);
  json_decref(root);
  if (rc == 0 && normalized) {
    *normalized = write_spec(spec);
    if (!*normalized) rc = mopt_diag_set(diag, MOPT_ENOMEM, "", "out of memory");
  }
  if (rc) {
    mopt_spec_free(spec);
    mopt_spec_init(spec);
    if (model_out) { free(*model_out); *model_out = NULL; }
  }
  return rc;
}
