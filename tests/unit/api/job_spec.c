/* job_spec.c — tests for api/job_spec.c: every pass option parses into the right mopt_spec
 * fields, every bad input is refused with the expected error and JSON pointer, nesting is
 * bounded, and the normalized text is canonical and idempotent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "job_spec.h"

#define MODEL "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static int parse(const char *text, int require_model, mopt_spec *s, char **norm, mopt_diag *d) {
  memset(d, 0, sizeof *d);
  return api_spec_parse(text, strlen(text), require_model, s, NULL, norm, d);
}

static void test_defaults_normalize(void **state) {
  (void)state;
  mopt_spec s;
  mopt_diag d;
  char *norm = NULL;
  assert_int_equal(parse("{}", 0, &s, &norm, &d), 0);
  assert_string_equal(norm, "{\"passes\":[],\"seed\":0,\"select\":{\"exclude\":[],\"include\":[\"*\"],"
                            "\"min_elements\":1024}}");
  assert_int_equal(s.n_passes, 0);
  assert_int_equal(s.n_include, 1);
  assert_string_equal(s.include[0], "*");
  assert_int_equal(s.min_elements, 1024);
  mopt_spec_free(&s);
  free(norm);
}

static void test_model_required_and_extracted(void **state) {
  (void)state;
  mopt_spec s;
  mopt_diag d = {0};
  char *model = NULL, *norm = NULL;
  assert_int_equal(parse("{\"passes\":[]}", 1, &s, NULL, &d), MOPT_ESPEC);
  assert_string_equal(d.where, "/model");
  const char *t = "{\"model\":\"" MODEL "\",\"passes\":[{\"op\":\"fp16\"}]}";
  assert_int_equal(api_spec_parse(t, strlen(t), 1, &s, &model, &norm, &d), 0);
  assert_string_equal(model, MODEL);
  assert_null(strstr(norm, "model"));   /* the key hashes model separately */
  assert_int_equal(s.n_passes, 1);
  assert_int_equal(s.passes[0].op, MOPT_PASS_FP16);
  mopt_spec_free(&s);
  free(model);
  free(norm);
  /* A model id must be exactly sha256:<64 lowercase hex>. */
  const char *bad[] = {"\"sha256:ABC\"", "\"sha256:" "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\"",
                       "42", "\"../../etc/passwd\""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char buf[256];
    snprintf(buf, sizeof buf, "{\"model\":%s}", bad[i]);
    assert_int_equal(parse(buf, 1, &s, NULL, &d), MOPT_ESPEC);
    assert_string_equal(d.where, "/model");
  }
}

static void test_every_option(void **state) {
  (void)state;
  const char *t =
      "{\"passes\":["
      "{\"op\":\"prune\",\"sparsity\":0.3,\"scope\":\"global\"},"
      "{\"op\":\"prune\",\"pattern\":\"2:4\"},"
      "{\"op\":\"prune\",\"pattern\":\"1:4\",\"sparsity\":0.75},"
      "{\"op\":\"prune\",\"pattern\":\"4:8\"},"
      "{\"op\":\"prune\",\"pattern\":\"block:4x1\",\"sparsity\":0.25},"
      "{\"op\":\"prune\",\"pattern\":\"channel\",\"norm\":\"l2\",\"sparsity\":0.125},"
      "{\"op\":\"cluster\",\"clusters\":256,\"init\":\"density\",\"granularity\":\"per_channel\","
      "\"encoding\":\"dense\"},"
      "{\"op\":\"cluster\",\"clusters\":2,\"init\":\"random\"},"
      "{\"op\":\"cluster\",\"init\":\"linear\"},"
      "{\"op\":\"quantize\",\"dtype\":\"uint4\",\"granularity\":\"block\",\"block_size\":128,"
      "\"symmetric\":true,\"mse\":true},"
      "{\"op\":\"decompose\",\"energy\":0.9},"
      "{\"op\":\"decompose\",\"rank\":12},"
      "{\"op\":\"decompose\"}"
      "],\"select\":{\"include\":[\"w*\",\"fc?\"],\"exclude\":[\"*embed*\"],\"min_elements\":0},"
      "\"seed\":42}";
  mopt_spec s;
  mopt_diag d;
  char *norm = NULL;
  assert_int_equal(parse(t, 0, &s, &norm, &d), 0);
  assert_int_equal(s.n_passes, 13);
  const mopt_pass *p = s.passes;
  assert_int_equal(p[0].op, MOPT_PASS_PRUNE);
  assert_int_equal(p[0].pattern, MOPT_PRUNE_UNSTRUCTURED);
  assert_true(p[0].sparsity == 0.3);
  assert_int_equal(p[0].scope, MOPT_SCOPE_GLOBAL);
  assert_int_equal(p[1].pattern, MOPT_PRUNE_NM);
  assert_int_equal(p[1].nm_n, 2);
  assert_int_equal(p[1].nm_m, 4);
  assert_true(p[1].sparsity == 0.5);
  assert_int_equal(p[1].scope, MOPT_SCOPE_PER_TENSOR);
  assert_int_equal(p[2].nm_n, 1);
  assert_int_equal(p[2].nm_m, 4);
  assert_true(p[2].sparsity == 0.75);
  assert_int_equal(p[3].nm_n, 4);
  assert_int_equal(p[3].nm_m, 8);
  assert_int_equal(p[4].pattern, MOPT_PRUNE_BLOCK);
  assert_int_equal(p[4].block_r, 4);
  assert_int_equal(p[4].block_c, 1);
  assert_true(p[4].sparsity == 0.25);
  assert_int_equal(p[5].pattern, MOPT_PRUNE_CHANNEL);
  assert_int_equal(p[5].channel_norm, 2);
  assert_int_equal(p[6].op, MOPT_PASS_CLUSTER);
  assert_int_equal(p[6].clusters, 256);
  assert_int_equal(p[6].init, MOPT_INIT_DENSITY);
  assert_int_equal(p[6].granularity, MOPT_GRAN_PER_CHANNEL);
  assert_int_equal(p[6].encoding, MOPT_ENC_DENSE);
  assert_int_equal(p[7].clusters, 2);
  assert_int_equal(p[7].init, MOPT_INIT_RANDOM);
  assert_int_equal(p[7].encoding, MOPT_ENC_LUT);
  assert_int_equal(p[8].clusters, 16);
  assert_int_equal(p[8].init, MOPT_INIT_LINEAR);
  assert_int_equal(p[8].granularity, MOPT_GRAN_PER_TENSOR);
  assert_int_equal(p[9].op, MOPT_PASS_QUANTIZE);
  assert_int_equal(p[9].qtype, MOPT_DT_UINT4);
  assert_int_equal(p[9].granularity, MOPT_GRAN_BLOCK);
  assert_int_equal(p[9].block_size, 128);
  assert_int_equal(p[9].symmetric, 1);
  assert_int_equal(p[9].mse_search, 1);
  assert_int_equal(p[9].activations, MOPT_ACT_NONE);
  assert_int_equal(p[10].op, MOPT_PASS_DECOMPOSE);
  assert_true(p[10].energy == 0.9);
  assert_int_equal(p[10].rank, 0);
  assert_int_equal(p[11].rank, 12);
  assert_true(p[11].energy == 0.0);
  assert_true(p[12].energy == 0.95);
  assert_int_equal(s.n_include, 2);
  assert_string_equal(s.include[0], "fc?");   /* sorted */
  assert_string_equal(s.include[1], "w*");
  assert_int_equal(s.n_exclude, 1);
  assert_string_equal(s.exclude[0], "*embed*");
  assert_int_equal(s.min_elements, 0);
  assert_int_equal(s.seed, 42);
  assert_non_null(strstr(norm, "{\"op\":\"prune\",\"pattern\":\"2:4\",\"scope\":\"per_tensor\","
                               "\"sparsity\":0.5}"));
  assert_non_null(strstr(norm, "{\"norm\":\"l2\",\"op\":\"prune\",\"pattern\":\"channel\","
                               "\"scope\":\"per_tensor\",\"sparsity\":0.125}"));
  assert_non_null(strstr(norm, "{\"op\":\"decompose\",\"rank\":12}"));
  assert_non_null(strstr(norm, "{\"energy\":0.95,\"op\":\"decompose\"}"));
  assert_non_null(strstr(norm, "\"sparsity\":0.3}"));   /* shortest form, not 0.29999… */
  mopt_spec_free(&s);
  free(norm);
}

static void test_quantize_defaults_and_variants(void **state) {
  (void)state;
  struct { const char *json; int qtype, gran, bs, sym, act; } cases[] = {
    {"{\"op\":\"quantize\"}", MOPT_DT_INT8, MOPT_GRAN_PER_CHANNEL, 0, 1, MOPT_ACT_NONE},
    {"{\"op\":\"quantize\",\"dtype\":\"uint8\"}", MOPT_DT_UINT8, MOPT_GRAN_PER_CHANNEL, 0, 0,
     MOPT_ACT_NONE},
    {"{\"op\":\"quantize\",\"dtype\":\"int4\",\"granularity\":\"block\"}", MOPT_DT_INT4,
     MOPT_GRAN_BLOCK, 32, 1, MOPT_ACT_NONE},
    {"{\"op\":\"quantize\",\"dtype\":\"uint8\",\"granularity\":\"per_tensor\",\"symmetric\":true,"
     "\"activations\":\"dynamic\"}", MOPT_DT_UINT8, MOPT_GRAN_PER_TENSOR, 0, 1, MOPT_ACT_DYNAMIC},
    {"{\"op\":\"quantize\",\"dtype\":\"int8\",\"symmetric\":false,\"activations\":\"dynamic\"}",
     MOPT_DT_INT8, MOPT_GRAN_PER_CHANNEL, 0, 0, MOPT_ACT_DYNAMIC},
    {"{\"op\":\"quantize\",\"granularity\":\"block\",\"block_size\":16}", MOPT_DT_INT8,
     MOPT_GRAN_BLOCK, 16, 1, MOPT_ACT_NONE},
    {"{\"op\":\"quantize\",\"granularity\":\"block\",\"block_size\":256}", MOPT_DT_INT8,
     MOPT_GRAN_BLOCK, 256, 1, MOPT_ACT_NONE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char buf[512];
    snprintf(buf, sizeof buf, "{\"passes\":[%s]}", cases[i].json);
    mopt_spec s;
    mopt_diag d;
    assert_int_equal(parse(buf, 0, &s, NULL, &d), 0);
    assert_int_equal(s.passes[0].qtype, cases[i].qtype);
    assert_int_equal(s.passes[0].granularity, cases[i].gran);
    assert_int_equal(s.passes[0].block_size, cases[i].bs);
    assert_int_equal(s.passes[0].symmetric, cases[i].sym);
    assert_int_equal(s.passes[0].activations, cases[i].act);
    mopt_spec_free(&s);
  }
}

typedef struct bad_case { const char *json; int err; const char *where; } bad_case;

static const bad_case bad_cases[] = {
  {"{\"passes\":[{\"op\":\"foo\"}]}", MOPT_ESPEC, "/passes/0/op"},
  {"{\"passes\":[{\"op\":7}]}", MOPT_ESPEC, "/passes/0/op"},
  {"{\"passes\":[{}]}", MOPT_ESPEC, "/passes/0/op"},
  {"{\"passes\":[{\"op\":\"fp16\"},{\"op\":\"prune\",\"sparsity\":-0.1}]}", MOPT_ESPEC,
   "/passes/1/sparsity"},
  {"{\"passes\":[{\"op\":\"prune\",\"sparsity\":1.5}]}", MOPT_ESPEC, "/passes/0/sparsity"},
  {"{\"passes\":[{\"op\":\"prune\",\"sparsity\":1}]}", MOPT_ESPEC, "/passes/0/sparsity"},
  {"{\"passes\":[{\"op\":\"prune\",\"sparsity\":\"0.5\"}]}", MOPT_ESPEC, "/passes/0/sparsity"},
  {"{\"passes\":[{\"op\":\"prune\",\"sparsity\":null}]}", MOPT_ESPEC, "/passes/0/sparsity"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"3:2\"}]}", MOPT_ESPEC, "/passes/0/pattern"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"0:4\"}]}", MOPT_ESPEC, "/passes/0/pattern"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"2:4x\"}]}", MOPT_ESPEC, "/passes/0/pattern"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"block:0x4\"}]}", MOPT_ESPEC, "/passes/0/pattern"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"block:1x1\"}]}", MOPT_ESPEC, "/passes/0/pattern"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"block:4\"}]}", MOPT_ESPEC, "/passes/0/pattern"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"stripes\"}]}", MOPT_ESPEC, "/passes/0/pattern"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":[\"2:4\"]}]}", MOPT_ESPEC, "/passes/0/pattern"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"2:4\",\"sparsity\":0.3}]}", MOPT_ESPEC,
   "/passes/0/sparsity"},
  {"{\"passes\":[{\"op\":\"prune\",\"norm\":\"l1\"}]}", MOPT_ESPEC, "/passes/0/norm"},
  {"{\"passes\":[{\"op\":\"prune\",\"pattern\":\"channel\",\"norm\":\"l3\"}]}", MOPT_ESPEC,
   "/passes/0/norm"},
  {"{\"passes\":[{\"op\":\"prune\",\"scope\":\"local\"}]}", MOPT_ESPEC, "/passes/0/scope"},
  {"{\"passes\":[{\"op\":\"prune\",\"clusters\":4}]}", MOPT_ESPEC, "/passes/0/clusters"},
  {"{\"passes\":[{\"op\":\"cluster\",\"clusters\":1}]}", MOPT_ESPEC, "/passes/0/clusters"},
  {"{\"passes\":[{\"op\":\"cluster\",\"clusters\":257}]}", MOPT_ESPEC, "/passes/0/clusters"},
  {"{\"passes\":[{\"op\":\"cluster\",\"clusters\":16.0}]}", MOPT_ESPEC, "/passes/0/clusters"},
  {"{\"passes\":[{\"op\":\"cluster\",\"clusters\":\"16\"}]}", MOPT_ESPEC, "/passes/0/clusters"},
  {"{\"passes\":[{\"op\":\"cluster\",\"init\":\"kmeans\"}]}", MOPT_ESPEC, "/passes/0/init"},
  {"{\"passes\":[{\"op\":\"cluster\",\"granularity\":\"block\"}]}", MOPT_ESPEC,
   "/passes/0/granularity"},
  {"{\"passes\":[{\"op\":\"cluster\",\"encoding\":\"huffman\"}]}", MOPT_ESPEC,
   "/passes/0/encoding"},
  {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int16\"}]}", MOPT_ESPEC, "/passes/0/dtype"},
  {"{\"passes\":[{\"op\":\"quantize\",\"granularity\":\"row\"}]}", MOPT_ESPEC,
   "/passes/0/granularity"},
  {"{\"passes\":[{\"op\":\"quantize\",\"granularity\":\"block\",\"block_size\":48}]}", MOPT_ESPEC,
   "/passes/0/block_size"},
  {"{\"passes\":[{\"op\":\"quantize\",\"granularity\":\"block\",\"block_size\":8}]}", MOPT_ESPEC,
   "/passes/0/block_size"},
  {"{\"passes\":[{\"op\":\"quantize\",\"granularity\":\"block\",\"block_size\":512}]}", MOPT_ESPEC,
   "/passes/0/block_size"},
  {"{\"passes\":[{\"op\":\"quantize\",\"block_size\":32}]}", MOPT_ESPEC, "/passes/0/block_size"},
  {"{\"passes\":[{\"op\":\"quantize\",\"symmetric\":\"yes\"}]}", MOPT_ESPEC, "/passes/0/symmetric"},
  {"{\"passes\":[{\"op\":\"quantize\",\"mse\":1}]}", MOPT_ESPEC, "/passes/0/mse"},
  {"{\"passes\":[{\"op\":\"quantize\",\"activations\":\"static\"}]}", MOPT_ESPEC,
   "/passes/0/activations"},
  {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int4\",\"activations\":\"dynamic\"}]}",
   MOPT_ESPEC, "/passes/0/activations"},
  {"{\"passes\":[{\"op\":\"quantize\",\"granularity\":\"block\",\"activations\":\"dynamic\"}]}",
   MOPT_ESPEC, "/passes/0/activations"},
  {"{\"passes\":[{\"op\":\"fp16\",\"dtype\":\"int8\"}]}", MOPT_ESPEC, "/passes/0/dtype"},
  {"{\"passes\":[{\"op\":\"decompose\",\"energy\":0}]}", MOPT_ESPEC, "/passes/0/energy"},
  {"{\"passes\":[{\"op\":\"decompose\",\"energy\":1.01}]}", MOPT_ESPEC, "/passes/0/energy"},
  {"{\"passes\":[{\"op\":\"decompose\",\"rank\":0}]}", MOPT_ESPEC, "/passes/0/rank"},
  {"{\"passes\":[{\"op\":\"decompose\",\"energy\":0.9,\"rank\":4}]}", MOPT_ESPEC,
   "/passes/0/rank"},
  {"{\"passes\":[{\"op\":\"quantize\"},{\"op\":\"fp16\"}]}", MOPT_ESPEC, "/passes/1"},
  {"{\"passes\":[{\"op\":\"quantize\"},{\"op\":\"quantize\",\"dtype\":\"int4\"}]}", MOPT_ESPEC,
   "/passes/1"},
  {"{\"passes\":{}}", MOPT_ESPEC, "/passes"},
  {"{\"passes\":[1]}", MOPT_ESPEC, "/passes/0"},
  {"{\"select\":[]}", MOPT_ESPEC, "/select"},
  {"{\"select\":{\"include\":\"*\"}}", MOPT_ESPEC, "/select/include"},
  {"{\"select\":{\"include\":[\"a\",1]}}", MOPT_ESPEC, "/select/include/1"},
  {"{\"select\":{\"exclude\":[\"\"]}}", MOPT_ESPEC, "/select/exclude/0"},
  {"{\"select\":{\"min_elements\":-1}}", MOPT_ESPEC, "/select/min_elements"},
  {"{\"select\":{\"min_elements\":1.5}}", MOPT_ESPEC, "/select/min_elements"},
  {"{\"select\":{\"foo\":1}}", MOPT_ESPEC, "/select/foo"},
  {"{\"seed\":-1}", MOPT_ESPEC, "/seed"},
  {"{\"seed\":1.5}", MOPT_ESPEC, "/seed"},
  {"{\"seed\":true}", MOPT_ESPEC, "/seed"},
  {"{\"a~b/c\":1}", MOPT_ESPEC, "/a~0b~1c"},
  {"{\"passes\":[],\"extra\":{}}", MOPT_ESPEC, "/extra"},
  {"[]", MOPT_ESPEC, ""},
  {"\"spec\"", MOPT_EJSON, NULL},
  {"{\"a\":", MOPT_EJSON, NULL},
  {"{\"seed\":1,\"seed\":2}", MOPT_EJSON, NULL},
  {"{} x", MOPT_EJSON, NULL},
  {"", MOPT_EJSON, NULL},
  {"{'seed':1}", MOPT_EJSON, NULL},
  {"{\"seed\":01}", MOPT_EJSON, NULL},
};

static void test_bad_inputs(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    mopt_spec s;
    mopt_diag d;
    char *norm = (char *)1;
    int rc = parse(bad_cases[i].json, 0, &s, &norm, &d);
    if (rc != bad_cases[i].err) fail_msg("case %zu %s: rc %d, want %d (%s at %s)", i,
                                         bad_cases[i].json, rc, bad_cases[i].err, d.msg, d.where);
    assert_null(norm);
    assert_true(strlen(d.msg) > 0);
    if (bad_cases[i].where) {
      if (strcmp(d.where, bad_cases[i].where) != 0)
        fail_msg("case %zu %s: where \"%s\", want \"%s\" (%s)", i, bad_cases[i].json, d.where,
                 bad_cases[i].where, d.msg);
    } else {
      assert_non_null(strstr(d.where, "line "));
    }
    assert_int_equal(s.n_passes, 0);   /* left init'ed on error */
  }
}

/* "anchor" on prune/cluster/quantize: a model id or release:{name}/{channel}, one per job,
 * kept in the canonical text (so the job key covers it); refused elsewhere and when malformed. */
static void test_anchor(void **state) {
  (void)state;
  mopt_spec s;
  mopt_diag d;
  char *norm = NULL;
  assert_int_equal(parse("{\"passes\":[{\"op\":\"prune\",\"anchor\":\"release:kws/stable\"},"
                         "{\"op\":\"quantize\",\"anchor\":\"release:kws/stable\"}]}", 0, &s, &norm, &d), 0);
  assert_int_equal(s.passes[0].use_anchor, 1);
  assert_int_equal(s.passes[1].use_anchor, 1);
  assert_string_equal(s.passes[1].anchor, "release:kws/stable");
  assert_non_null(strstr(norm, "{\"anchor\":\"release:kws/stable\",\"op\":\"prune\""));
  assert_non_null(strstr(norm, "{\"activations\":\"none\",\"anchor\":\"release:kws/stable\",\"dtype\""));
  /* the API rewrites a release to its model id and re-normalizes */
  snprintf(s.passes[0].anchor, sizeof s.passes[0].anchor, "%s", MODEL);
  char *again = api_spec_normalize(&s);
  assert_non_null(strstr(again, "\"anchor\":\"" MODEL "\""));
  free(again);
  mopt_spec_free(&s);
  free(norm);
  /* same text parsed again gives the same canonical form */
  assert_int_equal(parse("{\"passes\":[{\"op\":\"cluster\",\"anchor\":\"" MODEL "\"}]}", 0, &s, &norm, &d), 0);
  char *n2 = NULL;
  mopt_spec s2;
  assert_int_equal(parse(norm, 0, &s2, &n2, &d), 0);
  assert_string_equal(norm, n2);
  mopt_spec_free(&s);
  mopt_spec_free(&s2);
  free(norm);
  free(n2);
  const char *bad[][2] = {
    {"{\"passes\":[{\"op\":\"quantize\",\"anchor\":\"latest\"}]}", "/passes/0/anchor"},
    {"{\"passes\":[{\"op\":\"quantize\",\"anchor\":\"release:kws\"}]}", "/passes/0/anchor"},
    {"{\"passes\":[{\"op\":\"quantize\",\"anchor\":\"release:/stable\"}]}", "/passes/0/anchor"},
    {"{\"passes\":[{\"op\":\"quantize\",\"anchor\":\"release:a/b/c\"}]}", "/passes/0/anchor"},
    {"{\"passes\":[{\"op\":\"quantize\",\"anchor\":7}]}", "/passes/0/anchor"},
    {"{\"passes\":[{\"op\":\"prune\",\"anchor\":\"release:a/b\"},"
     "{\"op\":\"quantize\",\"anchor\":\"release:a/c\"}]}", "/passes/1/anchor"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(parse(bad[i][0], 0, &s, NULL, &d), MOPT_ESPEC);
    assert_string_equal(d.where, bad[i][1]);
  }
  assert_int_equal(parse("{\"passes\":[{\"op\":\"fp16\",\"anchor\":\"" MODEL "\"}]}", 0, &s, NULL, &d),
                   MOPT_ESPEC);
}

static void test_too_many_passes(void **state) {
  (void)state;
  char buf[2048] = "{\"passes\":[";
  for (int i = 0; i < 17; i++) strcat(buf, i ? ",{\"op\":\"prune\"}" : "{\"op\":\"prune\"}");
  strcat(buf, "]}");
  mopt_spec s;
  mopt_diag d;
  assert_int_equal(parse(buf, 0, &s, NULL, &d), MOPT_ESPEC);
  assert_string_equal(d.where, "/passes");
  /* 16 is fine */
  char *cut = strstr(buf, ",{\"op\":\"prune\"}]}");
  strcpy(cut, "]}");
  assert_int_equal(parse(buf, 0, &s, NULL, &d), 0);
  assert_int_equal(s.n_passes, 16);
  mopt_spec_free(&s);
}

static char *nested(int depth, const char *prefix, const char *suffix) {
  size_t n = strlen(prefix) + strlen(suffix) + 2 * (size_t)depth + 1;
  char *t = malloc(n);
  strcpy(t, prefix);
  size_t k = strlen(t);
  for (int i = 0; i < depth; i++) t[k++] = '[';
  for (int i = 0; i < depth; i++) t[k++] = ']';
  strcpy(t + k, suffix);
  return t;
}

static void test_nesting_bound(void **state) {
  (void)state;
  mopt_spec s;
  mopt_diag d;
  /* 10,000 deep: refused by the bracket scan as malformed JSON. */
  char *t = nested(10000, "", "");
  assert_int_equal(parse(t, 0, &s, NULL, &d), MOPT_EJSON);
  assert_non_null(strstr(d.msg, "nested"));
  free(t);
  t = nested(10000, "{\"passes\":", "}");
  assert_int_equal(parse(t, 0, &s, NULL, &d), MOPT_EJSON);
  free(t);
  /* 64 levels in all (object + 63 arrays) pass the scan and reach validation. */
  t = nested(63, "{\"x\":", "}");
  assert_int_equal(parse(t, 0, &s, NULL, &d), MOPT_ESPEC);
  assert_string_equal(d.where, "/x");
  free(t);
  t = nested(64, "{\"x\":", "}");
  assert_int_equal(parse(t, 0, &s, NULL, &d), MOPT_EJSON);
  free(t);
  /* Brackets inside strings do not count. */
  char glob[200] = "{\"select\":{\"include\":[\"";
  for (int i = 0; i < 100; i++) strcat(glob, "[");
  strcat(glob, "\\\"{\"]}}");
  assert_int_equal(parse(glob, 0, &s, NULL, &d), 0);
  assert_int_equal(s.n_include, 1);
  assert_int_equal(strlen(s.include[0]), 102);
  mopt_spec_free(&s);
}

static void test_nul_and_length(void **state) {
  (void)state;
  mopt_spec s;
  mopt_diag d;
  /* len excludes the garbage after the object: only len bytes are read. */
  const char *t = "{\"seed\":3}GARBAGE";
  assert_int_equal(api_spec_parse(t, 10, 0, &s, NULL, NULL, &d), 0);
  assert_int_equal(s.seed, 3);
  mopt_spec_free(&s);
  /* An embedded NUL byte is malformed JSON. */
  const char nul[] = "{\"seed\":3}\0 ";
  assert_int_equal(api_spec_parse(nul, sizeof nul - 1, 0, &s, NULL, NULL, &d), MOPT_EJSON);
  /* \u0000 inside a string is refused too (globs are C strings). */
  const char *esc = "{\"select\":{\"include\":[\"a\\u0000b\"]}}";
  assert_int_equal(api_spec_parse(esc, strlen(esc), 0, &s, NULL, NULL, &d), MOPT_EJSON);
}

static void test_canonical_and_idempotent(void **state) {
  (void)state;
  /* Same meaning, different text: one normalized form. */
  const char *a = "{\"seed\":0,\"passes\":[{\"sparsity\":0.5,\"op\":\"prune\"}]}";
  const char *b = "  {\"passes\" : [ {\"op\":\"prune\", \"pattern\":\"unstructured\","
                  " \"scope\":\"per_tensor\", \"sparsity\": 5e-1} ],"
                  " \"select\": {\"include\":[\"*\",\"*\"], \"exclude\":[], \"min_elements\":1024}}\n";
  const char *c = "{\"passes\":[{\"op\":\"prune\"}],\"select\":{}}";
  mopt_spec s;
  mopt_diag d;
  char *na, *nb, *nc;
  assert_int_equal(parse(a, 0, &s, &na, &d), 0);
  mopt_spec_free(&s);
  assert_int_equal(parse(b, 0, &s, &nb, &d), 0);
  mopt_spec_free(&s);
  assert_int_equal(parse(c, 0, &s, &nc, &d), 0);
  mopt_spec_free(&s);
  assert_string_equal(na, nb);
  assert_string_equal(na, nc);
  free(na);
  free(nb);
  free(nc);

  const char *specs[] = {
    "{}",
    "{\"passes\":[{\"op\":\"prune\",\"sparsity\":0.1},{\"op\":\"cluster\",\"clusters\":7},"
    "{\"op\":\"quantize\",\"dtype\":\"int4\",\"granularity\":\"block\",\"block_size\":64}]}",
    "{\"passes\":[{\"op\":\"decompose\",\"energy\":0.333333333333}],\"seed\":9007199254740993}",
    "{\"passes\":[{\"op\":\"prune\",\"pattern\":\"channel\"},{\"op\":\"fp16\"}],"
    "\"select\":{\"include\":[\"b\",\"a\\\"q\",\"\\u00e9\"],\"exclude\":[\"x\"]}}",
    "{\"passes\":[{\"op\":\"prune\",\"sparsity\":1e-7}]}",
  };
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
    char *n1 = NULL, *n2 = NULL;
    mopt_spec s1, s2;
    assert_int_equal(parse(specs[i], 0, &s1, &n1, &d), 0);
    assert_int_equal(parse(n1, 0, &s2, &n2, &d), 0);
    assert_string_equal(n1, n2);
    assert_null(strchr(n1, ' '));
    assert_null(strchr(n1, '\n'));
    /* The normalized text means exactly the same spec. */
    assert_int_equal(s1.n_passes, s2.n_passes);
    assert_memory_equal(s1.passes, s2.passes, s1.n_passes * sizeof s1.passes[0]);
    assert_int_equal(s1.n_include, s2.n_include);
    for (size_t k = 0; k < s1.n_include; k++) assert_string_equal(s1.include[k], s2.include[k]);
    assert_int_equal(s1.seed, s2.seed);
    mopt_spec_free(&s1);
    mopt_spec_free(&s2);
    free(n1);
    free(n2);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_defaults_normalize),
    cmocka_unit_test(test_model_required_and_extracted),
    cmocka_unit_test(test_every_option),
    cmocka_unit_test(test_quantize_defaults_and_variants),
    cmocka_unit_test(test_bad_inputs),
    cmocka_unit_test(test_anchor),
    cmocka_unit_test(test_too_many_passes),
    cmocka_unit_test(test_nesting_bound),
    cmocka_unit_test(test_nul_and_length),
    cmocka_unit_test(test_canonical_and_idempotent),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
