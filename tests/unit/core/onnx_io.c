/* tests for core/onnx_io.c: load validation on malformed models, byte-stable save, unknown
 * fields, atomic save_file, external data confinement, info/op counts, ONNX backend test data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model_builder.h"

/* ---------------------------------------------------------------- helpers ---- */
static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) { p[n++] = (uint8_t)(v | 0x80); v >>= 7; }
  p[n++] = (uint8_t)v;
  return n;
}

static int load_bytes(const uint8_t *b, size_t len, mopt_diag *d) {
  mopt_model *m = NULL;
  memset(d, 0, sizeof *d);
  int rc = mopt_model_load(b, len, NULL, &m, d);
  if (rc == 0) assert_non_null(m); else assert_null(m);
  mopt_model_destroy(m);
  return rc;
}

/* Packs pm (and frees it), loads, returns rc; diag in *d. */
static int load_pm(Onnx__ModelProto *pm, mopt_diag *d) {
  size_t len;
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  int rc = load_bytes(b, len, d);
  free(b);
  return rc;
}

static uint8_t *save_of(const uint8_t *b, size_t len, size_t *olen) {
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(mopt_model_load(b, len, NULL, &m, &d), 0);
  uint8_t *o;
  assert_int_equal(mopt_model_save(m, &o, olen), 0);
  mopt_model_destroy(m);
  return o;
}

static char tmpdir[256];

static int setup_tmp(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/mopt-onnx-io.XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}
static int teardown_tmp(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- round trips ---- */
static void test_roundtrip_stable(void **state) {
  (void)state;
  int64_t opsets[] = {9, 11, 13, 17, 21};
  for (size_t i = 0; i < 5; i++) {
    Onnx__ModelProto *pm = mb_mlp(opsets[i]);
    size_t len;
    uint8_t *b = mb_pack(pm, &len);
    mb_free(pm);
    size_t l1, l2;
    uint8_t *s1 = save_of(b, len, &l1);
    uint8_t *s2 = save_of(s1, l1, &l2);
    assert_int_equal(l1, len);             /* protobuf-c wrote it: identical to the input */
    assert_memory_equal(s1, b, len);
    assert_int_equal(l2, l1);
    assert_memory_equal(s2, s1, l1);
    free(b); free(s1); free(s2);
  }
}

/* Unknown fields of every wire type appended to the model survive load → save. */
static void test_unknown_fields_survive(void **state) {
  (void)state;
  size_t len;
  Onnx__ModelProto *pm = mb_mlp(13);
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  uint8_t extra[64];
  size_t k = 0;
  k += put_varint(extra + k, (1000u << 3) | 0); k += put_varint(extra + k, 123456789);
  k += put_varint(extra + k, (1001u << 3) | 2); k += put_varint(extra + k, 5);
  memcpy(extra + k, "hello", 5); k += 5;
  k += put_varint(extra + k, (1002u << 3) | 5); memcpy(extra + k, "\x01\x02\x03\x04", 4); k += 4;
  k += put_varint(extra + k, (1003u << 3) | 1); memcpy(extra + k, "abcdefgh", 8); k += 8;
  uint8_t *x = malloc(len + k);
  memcpy(x, b, len);
  memcpy(x + len, extra, k);
  size_t l1, l2;
  uint8_t *s1 = save_of(x, len + k, &l1);
  assert_int_equal(l1, len + k);
  assert_memory_equal(s1, x, len + k);
  uint8_t *s2 = save_of(s1, l1, &l2);
  assert_int_equal(l2, l1);
  assert_memory_equal(s2, s1, l1);
  free(b); free(x); free(s1); free(s2);
}

/* Unknown fields nested in an initializer, a node and an attribute tensor survive both load
 * paths (memory: protobuf-c copies; file: payloads borrowed from the mapping). */
static void add_unknown(ProtobufCMessage *msg, uint32_t tag, const char *payload) {
  ProtobufCMessageUnknownField *u = realloc(msg->unknown_fields,
                                            (msg->n_unknown_fields + 1) * sizeof *u);
  assert_non_null(u);
  msg->unknown_fields = u;
  u += msg->n_unknown_fields++;
  u->tag = tag;
  u->wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
  /* protobuf-c keeps the length prefix of an unknown length-delimited field in data */
  size_t n = strlen(payload);
  u->data = mb_alloc(n + 10);
  u->len = put_varint(u->data, n);
  memcpy(u->data + u->len, payload, n);
  u->len += n;
}

static void test_nested_unknown_fields(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_mlp(13);
  int64_t wd[2] = {8, 8};
  mb_constant(pm->graph, "K", mb_tensor_seq("K", 2, wd, 5));
  add_unknown(&pm->graph->initializer[0]->base, 900, "tensor-extra");
  add_unknown(&pm->graph->node[1]->base, 901, "node-extra");
  add_unknown(&pm->graph->node[2]->attribute[0]->t->base, 902, "attr-tensor-extra");
  add_unknown(&pm->graph->base, 903, "graph-extra");
  size_t len;
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  assert_non_null(memmem(b, len, "attr-tensor-extra", 17));
  size_t l1;
  uint8_t *s1 = save_of(b, len, &l1);
  assert_int_equal(l1, len);
  assert_memory_equal(s1, b, len);
  free(s1);
  char path[600];
  snprintf(path, sizeof path, "%s/unknown.onnx", tmpdir);
  FILE *f = fopen(path, "wb");
  fwrite(b, 1, len, f);
  fclose(f);
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(mopt_model_load_file(path, NULL, &m, &d), 0);
  assert_int_equal(mopt_model_save(m, &s1, &l1), 0);
  assert_int_equal(l1, len);
  assert_memory_equal(s1, b, len);
  free(s1);
  mopt_model_destroy(m);
  free(b);
}

static void test_save_file_atomic(void **state) {
  (void)state;
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(mb_load(mb_mlp(13), &m, &d), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/out.onnx", tmpdir);
  assert_int_equal(mopt_model_save_file(m, path, &d), 0);
  /* overwrite in place works too */
  assert_int_equal(mopt_model_save_file(m, path, &d), 0);
  uint8_t *mem;
  size_t mlen;
  assert_int_equal(mopt_model_save(m, &mem, &mlen), 0);
  mopt_model_destroy(m);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal((size_t)st.st_size, mlen);
  /* nothing but out.onnx in the dir (no temp left behind) */
  DIR *dir = opendir(tmpdir);
  struct dirent *de;
  int files = 0;
  while ((de = readdir(dir))) if (de->d_name[0] != '.' || strlen(de->d_name) > 2) files++;
  closedir(dir);
  assert_int_equal(files, 1);
  /* load_file gives the same model back */
  assert_int_equal(mopt_model_load_file(path, NULL, &m, &d), 0);
  uint8_t *o;
  size_t olen;
  assert_int_equal(mopt_model_save(m, &o, &olen), 0);
  assert_int_equal(olen, mlen);
  assert_memory_equal(o, mem, mlen);
  mopt_model_destroy(m);
  free(o); free(mem);
  unlink(path);
  /* a missing file is ENOTFOUND; saving into a missing dir fails cleanly */
  assert_int_equal(mopt_model_load_file("/nonexistent/x.onnx", NULL, &m, &d), MOPT_ENOTFOUND);
  assert_null(m);
  assert_int_equal(mb_load(mb_mlp(13), &m, &d), 0);
  assert_int_equal(mopt_model_save_file(m, "/nonexistent-dir/x.onnx", &d), MOPT_EIO);
  mopt_model_destroy(m);
}

/* Every model.onnx of the ONNX backend test data loads and re-saves byte for byte. */
static int walk_testdata(const char *dir, int *n, int *bad) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    struct stat st;
    if (stat(p, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) { walk_testdata(p, n, bad); continue; }
    if (strcmp(de->d_name, "model.onnx") != 0) continue;
    FILE *f = fopen(p, "rb");
    uint8_t *b = malloc((size_t)st.st_size + 1);
    size_t len = fread(b, 1, (size_t)st.st_size, f);
    fclose(f);
    mopt_model *m;
    mopt_diag dg;
    (*n)++;
    int rc = mopt_model_load(b, len, NULL, &m, &dg);
    if (rc) {
      printf("# %s: %s (%s)\n", p, dg.msg, dg.where);
      (*bad)++;
    } else {
      uint8_t *o;
      size_t olen;
      mopt_model_save(m, &o, &olen);
      if (olen != len || memcmp(o, b, len)) { printf("# %s: re-saved bytes differ\n", p); (*bad)++; }
      free(o);
      mopt_model_destroy(m);
      /* the zero-copy file path gives the same bytes */
      if (mopt_model_load_file(p, NULL, &m, &dg) != 0) {
        printf("# %s: load_file: %s\n", p, dg.msg);
        (*bad)++;
      } else {
        mopt_model_save(m, &o, &olen);
        if (olen != len || memcmp(o, b, len)) { printf("# %s: load_file re-save differs\n", p); (*bad)++; }
        free(o);
        mopt_model_destroy(m);
      }
    }
    free(b);
  }
  closedir(d);
  return 0;
}

static void test_backend_testdata(void **state) {
  (void)state;
  const char *root = "/usr/share/libonnx-testdata/data";
  struct stat st;
  if (stat(root, &st) != 0) { skip(); return; }
  int n = 0, bad = 0;
  walk_testdata(root, &n, &bad);
  printf("# %d backend test models, %d failed\n", n, bad);
  assert_true(n > 100);
  assert_int_equal(bad, 0);
}

/* ---------------------------------------------------------------- malformed ---- */
static void test_truncated(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_mlp(13);
  size_t len;
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  /* locate the graph field (7) at top level: truncation strictly inside it must be EPARSE */
  size_t pos = 0, gstart = 0, gend = 0;
  while (pos < len) {
    uint64_t key = 0, v = 0;
    unsigned sh = 0;
    while (b[pos] & 0x80) key |= (uint64_t)(b[pos++] & 0x7f) << (sh += 7, sh - 7);
    key |= (uint64_t)b[pos++] << sh;
    if ((key & 7) == 0) { while (b[pos++] & 0x80) {} continue; }
    assert_int_equal(key & 7, 2);
    sh = 0;
    while (b[pos] & 0x80) v |= (uint64_t)(b[pos++] & 0x7f) << (sh += 7, sh - 7);
    v |= (uint64_t)b[pos++] << sh;
    if ((key >> 3) == 7) { gstart = pos; gend = pos + v; }
    pos += v;
  }
  assert_true(gend > gstart + 100);
  int parse = 0;
  for (size_t cut = 0; cut < len; cut++) {
    mopt_diag d;
    int rc = load_bytes(b, cut, &d);
    if (cut > gstart && cut < gend) {
      assert_int_equal(rc, MOPT_EPARSE);
      assert_non_null(strstr(d.where, "byte "));
      parse++;
    } else {
      assert_true(rc == 0 || rc == MOPT_EMODEL || rc == MOPT_EPARSE);
    }
  }
  assert_true(parse > 100);
  /* and random byte flips never crash */
  uint32_t s = 7;
  uint8_t *c = malloc(len);
  for (int i = 0; i < 3000; i++) {
    memcpy(c, b, len);
    for (int k = 0; k < 3; k++) {
      s = s * 1664525u + 1013904223u;
      c[(s >> 8) % len] ^= (uint8_t)(1u << (s & 7));
    }
    mopt_diag d;
    load_bytes(c, len, &d);
  }
  free(c);
  free(b);
}

static void test_garbage(void **state) {
  (void)state;
  mopt_diag d;
  assert_int_equal(load_bytes((const uint8_t *)"", 0, &d), MOPT_EMODEL); /* empty: no graph */
  assert_int_equal(load_bytes((const uint8_t *)"\xff\xff\xff", 3, &d), MOPT_EPARSE);
  assert_int_equal(load_bytes((const uint8_t *)"\x0b\x00", 2, &d), MOPT_EPARSE); /* group */
  /* graph field declaring more bytes than there are */
  assert_int_equal(load_bytes((const uint8_t *)"\x3a\x10\x01", 3, &d), MOPT_EPARSE);
  assert_non_null(strstr(d.where, "byte 0"));
  /* a known field with the wrong wire type (ir_version as bytes) */
  assert_int_equal(load_bytes((const uint8_t *)"\x0a\x01\x00", 3, &d), MOPT_EPARSE);
}

/* Nesting far deeper than any model: TypeProto.sequence_type.elem_type... 100000 levels. */
static void test_deep_nesting(void **state) {
  (void)state;
  const int levels = 100000;
  size_t cap = (size_t)levels * 16 + 64;
  uint8_t *buf = malloc(cap), *tmp = malloc(cap);
  size_t len = 0; /* innermost TypeProto is empty */
  for (int i = 0; i < levels; i++) {
    /* Sequence{ elem_type(1) = TypeProto } then TypeProto{ sequence_type(4) = Sequence } */
    size_t k = 0;
    k += put_varint(tmp + k, (1 << 3) | 2); k += put_varint(tmp + k, len);
    memcpy(tmp + k, buf, len); k += len;
    size_t k2 = 0;
    k2 += put_varint(buf + k2, (4 << 3) | 2); k2 += put_varint(buf + k2, k);
    memcpy(buf + k2, tmp, k); k2 += k;
    len = k2;
  }
  /* ValueInfoProto{ name, type(2) }, GraphProto{ input(11) }, ModelProto{ graph(7) } */
  size_t k = 0;
  k += put_varint(tmp + k, (1 << 3) | 2); k += put_varint(tmp + k, 1); tmp[k++] = 'x';
  k += put_varint(tmp + k, (2 << 3) | 2); k += put_varint(tmp + k, len);
  memcpy(tmp + k, buf, len); k += len;
  len = 0;
  len += put_varint(buf + len, (11 << 3) | 2); len += put_varint(buf + len, k);
  memcpy(buf + len, tmp, k); len += k;
  k = 0;
  k += put_varint(tmp + k, (7 << 3) | 2); k += put_varint(tmp + k, len);
  memcpy(tmp + k, buf, len); k += len;
  mopt_diag d;
  assert_int_equal(load_bytes(tmp, k, &d), MOPT_ELIMIT);
  assert_non_null(strstr(d.msg, "nested"));
  free(buf);
  free(tmp);
}

static void test_subgraph_depth_limit(void **state) {
  (void)state;
  /* If nodes nested 40 deep (default limit 32) */
  Onnx__ModelProto *pm = mb_model(13, 7);
  int64_t sc[1] = {1};
  Onnx__GraphProto *g = pm->graph;
  mb_input(g, "c", MOPT_DT_BOOL, 0, sc);
  for (int i = 0; i < 40; i++) {
    Onnx__GraphProto *t = mb_graph_new("t"), *e = mb_graph_new("e");
    Onnx__NodeProto *n = mb_node(g, "If", "c", i == 0 ? "Y" : "o", NULL);
    mb_attr_g(n, "then_branch", t);
    mb_attr_g(n, "else_branch", e);
    mb_constant(e, "o", mb_tensor_seq("v", 1, sc, 1));
    mb_output(e, "o", MOPT_DT_FLOAT);
    mb_output(t, "o", MOPT_DT_FLOAT);
    g = t;
  }
  mb_constant(g, "o", mb_tensor_seq("v", 1, sc, 1));
  mb_output(pm->graph, "Y", MOPT_DT_FLOAT);
  size_t len;
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  mopt_diag d;
  assert_int_equal(load_bytes(b, len, &d), MOPT_ELIMIT);
  /* with a higher limit it is a valid model */
  mopt_load_limits lim = {.max_graph_depth = 64};
  mopt_model *m;
  assert_int_equal(mopt_model_load(b, len, &lim, &m, &d), 0);
  mopt_model_info info;
  mopt_model_info_get(m, &info);
  assert_int_equal(info.node_count, 81);
  assert_int_equal(info.weight_count, 41);
  mopt_model_destroy(m);
  free(b);
}

static void test_dims(void **state) {
  (void)state;
  mopt_diag d;
  /* product overflows 64 bits */
  Onnx__ModelProto *pm = mb_mlp(13);
  int64_t big[3] = {1ll << 40, 1ll << 40, 16};
  mb_init(pm->graph, mb_tensor_raw("huge", MOPT_DT_FLOAT, 3, big, "", 0));
  assert_int_equal(load_pm(pm, &d), MOPT_ELIMIT);
  assert_non_null(strstr(d.where, "huge"));
  assert_non_null(strstr(d.msg, "overflow"));
  /* over the element limit without overflow */
  pm = mb_mlp(13);
  int64_t many[2] = {1ll << 20, 1ll << 20};
  mb_init(pm->graph, mb_tensor_raw("many", MOPT_DT_FLOAT, 2, many, "", 0));
  assert_int_equal(load_pm(pm, &d), MOPT_ELIMIT);
  assert_non_null(strstr(d.where, "many"));
  /* custom limits: W1 has 512 elements */
  pm = mb_mlp(13);
  size_t len;
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  mopt_load_limits lim = {.max_tensor_elems = 100};
  mopt_model *m;
  assert_int_equal(mopt_model_load(b, len, &lim, &m, &d), MOPT_ELIMIT);
  assert_non_null(strstr(d.where, "W1"));
  mopt_load_limits lim2 = {.max_total_bytes = 1000};
  assert_int_equal(mopt_model_load(b, len, &lim2, &m, &d), MOPT_ELIMIT);
  free(b);
  /* negative dimension */
  pm = mb_mlp(13);
  int64_t neg[2] = {4, -1};
  mb_init(pm->graph, mb_tensor_raw("neg", MOPT_DT_FLOAT, 2, neg, "", 0));
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  assert_non_null(strstr(d.msg, "negative"));
  /* more than 8 dims */
  pm = mb_mlp(13);
  int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  mb_init(pm->graph, mb_tensor_raw("nine", MOPT_DT_FLOAT, 9, nine, "abcd", 4));
  assert_int_equal(load_pm(pm, &d), MOPT_EUNSUPPORTED);
}

static void test_data_length(void **state) {
  (void)state;
  mopt_diag d;
  int64_t dims[2] = {4, 4};
  /* raw_data too short */
  Onnx__ModelProto *pm = mb_mlp(13);
  mb_init(pm->graph, mb_tensor_raw("short", MOPT_DT_FLOAT, 2, dims, "0123456789ab", 12));
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  assert_non_null(strstr(d.where, "short"));
  assert_non_null(strstr(d.msg, "raw_data holds 12 bytes"));
  assert_non_null(strstr(d.msg, "need 64"));
  /* 4-bit: 16 elements need 8 bytes, 9 is wrong; 5 elements need 3 */
  pm = mb_mlp(21);
  mb_init(pm->graph, mb_tensor_raw("i4", MOPT_DT_INT4, 2, dims, "012345678", 9));
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  pm = mb_mlp(21);
  int64_t five[1] = {5};
  mb_init(pm->graph, mb_tensor_raw("u4", MOPT_DT_UINT4, 1, five, "012", 3));
  assert_int_equal(load_pm(pm, &d), 0);
  /* typed fields: each with a wrong count */
  struct { int32_t dt; int field; } cases[] = {
    {MOPT_DT_FLOAT, 0}, {MOPT_DT_INT8, 1}, {MOPT_DT_UINT16, 1}, {MOPT_DT_FLOAT16, 1},
    {MOPT_DT_BOOL, 1}, {MOPT_DT_INT64, 2}, {MOPT_DT_DOUBLE, 3}, {MOPT_DT_UINT64, 4},
    {MOPT_DT_UINT32, 4}, {MOPT_DT_BFLOAT16, 1}, {MOPT_DT_INT4, 1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    for (int good = 0; good < 2; good++) {
      pm = mb_mlp(21);
      Onnx__TensorProto *t = mb_tensor_raw("typed", cases[i].dt, 2, dims, "", 0);
      t->has_raw_data = 0;
      free(t->raw_data.data);
      t->raw_data.data = NULL;
      t->raw_data.len = 0;
      size_t n = cases[i].dt == MOPT_DT_INT4 ? 8 : 16;
      if (!good) n--;
      switch (cases[i].field) {
      case 0: t->n_float_data = n; t->float_data = mb_alloc(n * 4); break;
      case 1: t->n_int32_data = n; t->int32_data = mb_alloc(n * 4); break;
      case 2: t->n_int64_data = n; t->int64_data = mb_alloc(n * 8); break;
      case 3: t->n_double_data = n; t->double_data = mb_alloc(n * 8); break;
      case 4: t->n_uint64_data = n; t->uint64_data = mb_alloc(n * 8); break;
      }
      mb_init(pm->graph, t);
      int rc = load_pm(pm, &d);
      if (good) assert_int_equal(rc, 0);
      else {
        assert_int_equal(rc, MOPT_EMODEL);
        assert_non_null(strstr(d.where, "typed"));
      }
    }
  }
  /* data in the field of another dtype: float_data on an INT64 tensor */
  pm = mb_mlp(13);
  Onnx__TensorProto *t = mb_tensor_raw("wrongfield", MOPT_DT_INT64, 2, dims, "", 0);
  t->has_raw_data = 0;
  t->n_float_data = 16;
  t->float_data = mb_alloc(64);
  mb_init(pm->graph, t);
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  assert_non_null(strstr(d.msg, "float_data"));
  /* both raw_data and a typed field */
  pm = mb_mlp(13);
  float *vals = mb_values(16, 1);
  t = mb_tensor_raw("both", MOPT_DT_FLOAT, 2, dims, vals, 64);
  free(vals);
  t->n_float_data = 16;
  t->float_data = mb_alloc(64);
  mb_init(pm->graph, t);
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  /* no data at all for 16 elements */
  pm = mb_mlp(13);
  t = mb_tensor_raw("nodata", MOPT_DT_FLOAT, 2, dims, "", 0);
  t->has_raw_data = 0;
  mb_init(pm->graph, t);
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  /* the same checks apply inside Constant node attributes */
  pm = mb_mlp(13);
  mb_constant(pm->graph, "cbad", mb_tensor_raw("cbad", MOPT_DT_FLOAT, 2, dims, "xx", 2));
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  assert_non_null(strstr(d.where, "attribute value"));
}

static void test_wrong_dtype(void **state) {
  (void)state;
  mopt_diag d;
  int64_t dims[1] = {4};
  Onnx__ModelProto *pm = mb_mlp(13);
  mb_init(pm->graph, mb_tensor_raw("odd", 99, 1, dims, "0123", 4));
  assert_int_equal(load_pm(pm, &d), MOPT_EUNSUPPORTED);
  assert_non_null(strstr(d.msg, "99"));
  assert_non_null(strstr(d.where, "odd"));
  pm = mb_mlp(13);
  mb_init(pm->graph, mb_tensor_raw("undef", 0, 1, dims, "0123", 4));
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  pm = mb_mlp(13);
  mb_init(pm->graph, mb_tensor_raw("negdt", -5, 1, dims, "0123", 4));
  assert_int_equal(load_pm(pm, &d), MOPT_EUNSUPPORTED);
  /* a string tensor in raw_data */
  pm = mb_mlp(13);
  mb_init(pm->graph, mb_tensor_raw("str", MOPT_DT_STRING, 1, dims, "0123", 4));
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
}

static void test_cycle_and_missing(void **state) {
  (void)state;
  mopt_diag d;
  /* cycle: A(y) -> x, B(x) -> y */
  Onnx__ModelProto *pm = mb_model(13, 7);
  int64_t xd[1] = {4};
  mb_input(pm->graph, "in", MOPT_DT_FLOAT, 1, xd);
  mb_node(pm->graph, "Add", "in,y", "x", "nodeA");
  mb_node(pm->graph, "Relu", "x", "y", "nodeB");
  mb_output(pm->graph, "y", MOPT_DT_FLOAT);
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  assert_non_null(strstr(d.where, "nodeA"));
  assert_non_null(strstr(d.msg, "nodeB"));
  assert_non_null(strstr(d.msg, "cycle"));
  /* unsorted (acyclic) graph is refused the same way */
  pm = mb_model(13, 7);
  mb_input(pm->graph, "in", MOPT_DT_FLOAT, 1, xd);
  mb_node(pm->graph, "Relu", "x", "y", "second");
  mb_node(pm->graph, "Relu", "in", "x", "first");
  mb_output(pm->graph, "y", MOPT_DT_FLOAT);
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  assert_non_null(strstr(d.where, "second"));
  /* missing input */
  pm = mb_mlp(13);
  mb_node(pm->graph, "Add", "Y,nothere", "Z", "adder");
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  assert_non_null(strstr(d.msg, "\"nothere\""));
  assert_non_null(strstr(d.where, "adder"));
  /* optional empty inputs are fine; an unnamed node is reported by op and index */
  pm = mb_mlp(13);
  mb_node(pm->graph, "Clip", "Y,,", "Z", NULL);
  assert_int_equal(load_pm(pm, &d), 0);
  pm = mb_mlp(13);
  mb_node(pm->graph, "Clip", "Y,,nope", "Z", NULL);
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  assert_non_null(strstr(d.where, "Clip#2"));
  /* graph output never produced */
  pm = mb_mlp(13);
  mb_output(pm->graph, "ghost", MOPT_DT_FLOAT);
  assert_int_equal(load_pm(pm, &d), MOPT_EMODEL);
  /* subgraph may read outer values defined before the If; unknown names are refused */
  for (int bad = 0; bad < 2; bad++) {
    pm = mb_mlp(13);
    int64_t sc[1] = {1};
    mb_input(pm->graph, "c", MOPT_DT_BOOL, 0, sc);
    Onnx__GraphProto *t = mb_graph_new("then"), *e = mb_graph_new("else");
    mb_node(t, "Relu", bad ? "unknown" : "h", "o1", "inner");
    mb_output(t, "o1", MOPT_DT_FLOAT);
    mb_node(e, "Relu", "Y", "o2", NULL);
    mb_output(e, "o2", MOPT_DT_FLOAT);
    Onnx__NodeProto *n = mb_node(pm->graph, "If", "c", "Z", "branch");
    mb_attr_g(n, "then_branch", t);
    mb_attr_g(n, "else_branch", e);
    int rc = load_pm(pm, &d);
    if (bad) {
      assert_int_equal(rc, MOPT_EMODEL);
      assert_non_null(strstr(d.where, "main/branch.then_branch"));
      assert_non_null(strstr(d.where, "inner"));
    } else {
      assert_int_equal(rc, 0);
    }
  }
}

/* ---------------------------------------------------------------- external data ---- */
static Onnx__ModelProto *ext_model(const char *location, const char *offset, const char *length) {
  Onnx__ModelProto *pm = mb_model(13, 7);
  int64_t xd[2] = {1, 4}, wd[2] = {4, 2};
  mb_input(pm->graph, "X", MOPT_DT_FLOAT, 2, xd);
  Onnx__TensorProto *t = mb_tensor_raw("Wext", MOPT_DT_FLOAT, 2, wd, "", 0);
  t->has_raw_data = 0;
  t->has_data_location = 1;
  t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  const char *kv[3][2] = {{"location", location}, {"offset", offset}, {"length", length}};
  for (int i = 0; i < 3; i++) {
    if (!kv[i][1]) continue;
    Onnx__StringStringEntryProto *e = mb_alloc(sizeof *e);
    onnx__string_string_entry_proto__init(e);
    e->key = mb_strdup(kv[i][0]);
    e->value = mb_strdup(kv[i][1]);
    MB_PUSH(t->external_data, t->n_external_data, e);
  }
  mb_init(pm->graph, t);
  mb_node(pm->graph, "MatMul", "X,Wext", "Y", "mm");
  mb_output(pm->graph, "Y", MOPT_DT_FLOAT);
  return pm;
}

static int ext_load(const char *location, const char *offset, const char *length, mopt_diag *d,
                    float *vals) {
  char dir[512], path[600];
  snprintf(dir, sizeof dir, "%s/bundle", tmpdir);
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  size_t len;
  Onnx__ModelProto *pm = ext_model(location, offset, length);
  uint8_t *b = mb_pack(pm, &len);
  mb_free(pm);
  FILE *f = fopen(path, "wb");
  fwrite(b, 1, len, f);
  fclose(f);
  mopt_model *m;
  int rc = mopt_model_load_file(path, NULL, &m, d);
  if (rc == 0) {
    mopt_weight *w;
    size_t n;
    assert_int_equal(mopt_model_weights(m, &w, &n), 0);
    assert_int_equal(n, 1);
    float *v;
    assert_int_equal(mopt_weight_read_f32(m, &w[0], &v, d), 0);
    memcpy(vals, v, 32);
    free(v);
    /* the saved model is self-contained: it loads from memory without a bundle */
    uint8_t *o;
    size_t olen;
    assert_int_equal(mopt_model_save(m, &o, &olen), 0);
    mopt_model *m2;
    assert_int_equal(mopt_model_load(o, olen, NULL, &m2, d), 0);
    mopt_model_destroy(m2);
    free(o);
    mopt_model_destroy(m);
  }
  /* from memory without a bundle dir every external tensor is refused */
  mopt_diag d2;
  assert_int_equal(load_bytes(b, len, &d2), MOPT_EUNSUPPORTED);
  free(b);
  return rc;
}

static void test_external_data(void **state) {
  (void)state;
  char p[600], q[600];
  snprintf(p, sizeof p, "%s/bundle", tmpdir);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/bundle/sub", tmpdir);
  assert_int_equal(mkdir(p, 0755), 0);
  float data[16];
  for (int i = 0; i < 16; i++) data[i] = (float)i * 0.5f;
  snprintf(p, sizeof p, "%s/bundle/w.bin", tmpdir);
  FILE *f = fopen(p, "wb");
  fwrite(data, 4, 16, f);
  fclose(f);
  snprintf(p, sizeof p, "%s/bundle/sub/w2.bin", tmpdir);
  f = fopen(p, "wb");
  fwrite(data, 4, 8, f);
  fclose(f);
  snprintf(p, sizeof p, "%s/outside.bin", tmpdir);
  f = fopen(p, "wb");
  fwrite(data, 4, 16, f);
  fclose(f);
  snprintf(q, sizeof q, "%s/bundle/link.bin", tmpdir);
  assert_int_equal(symlink(p, q), 0);
  snprintf(p, sizeof p, "%s/bundle/sub", tmpdir);
  snprintf(q, sizeof q, "%s/bundle/dirlink", tmpdir);
  assert_int_equal(symlink(p, q), 0);

  mopt_diag d;
  float v[8];
  assert_int_equal(ext_load("w.bin", "32", "32", &d, v), 0);
  for (int i = 0; i < 8; i++) assert_true(v[i] == data[8 + i]);
  assert_int_equal(ext_load("sub/w2.bin", NULL, NULL, &d, v), 0);
  for (int i = 0; i < 8; i++) assert_true(v[i] == data[i]);
  /* refusals */
  snprintf(p, sizeof p, "%s/outside.bin", tmpdir);
  assert_int_equal(ext_load(p, NULL, "32", &d, v), MOPT_EMODEL);
  assert_non_null(strstr(d.msg, "absolute"));
  assert_non_null(strstr(d.where, "Wext"));
  assert_int_equal(ext_load("../outside.bin", NULL, "32", &d, v), MOPT_EMODEL);
  assert_non_null(strstr(d.msg, "leaves the bundle"));
  assert_int_equal(ext_load("sub/../w.bin", NULL, "32", &d, v), MOPT_EMODEL);
  assert_int_equal(ext_load("link.bin", NULL, "32", &d, v), MOPT_EMODEL);
  assert_non_null(strstr(d.msg, "symlink"));
  assert_int_equal(ext_load("dirlink/w2.bin", NULL, NULL, &d, v), MOPT_EMODEL);
  assert_int_equal(ext_load("missing.bin", NULL, NULL, &d, v), MOPT_EMODEL);
  assert_int_equal(ext_load("w.bin", "60", "32", &d, v), MOPT_EMODEL);  /* past the end */
  assert_int_equal(ext_load("w.bin", "0", "16", &d, v), MOPT_EMODEL);   /* too short */
  assert_int_equal(ext_load("w.bin", NULL, NULL, &d, v), MOPT_EMODEL);  /* 64 bytes, needs 32 */
  assert_int_equal(ext_load("w.bin", "-4", "32", &d, v), MOPT_EMODEL);
  assert_int_equal(ext_load("w.bin", "99999999999999999999", "32", &d, v), MOPT_EMODEL);
  assert_int_equal(ext_load("", NULL, "32", &d, v), MOPT_EMODEL);
  assert_int_equal(ext_load("sub", NULL, "32", &d, v), MOPT_EMODEL);   /* a directory */
}

/* ---------------------------------------------------------------- info ---- */
typedef struct ops_seen { char names[8][32]; uint64_t counts[8]; int n; } ops_seen;
static void op_cb(const char *op, uint64_t count, void *ctx) {
  ops_seen *s = ctx;
  snprintf(s->names[s->n], 32, "%s", op);
  s->counts[s->n++] = count;
}

static void test_info(void **state) {
  (void)state;
  Onnx__ModelProto *pm = mb_mlp(17);
  int64_t d5[1] = {5};
  mb_constant(pm->graph, "C", mb_tensor_seq("C", 1, d5, 9));
  mb_node(pm->graph, "Relu", "Y", "Z", NULL);
  Onnx__OperatorSetIdProto *o = mb_alloc(sizeof *o);
  onnx__operator_set_id_proto__init(o);
  o->domain = mb_strdup("com.microsoft");
  o->has_version = 1;
  o->version = 1;
  MB_PUSH(pm->opset_import, pm->n_opset_import, o);
  mopt_model *m;
  mopt_diag d;
  assert_int_equal(mb_load(pm, &m, &d), 0);
  mopt_model_info info;
  assert_int_equal(mopt_model_info_get(m, &info), 0);
  assert_int_equal(info.ir_version, 8);
  assert_int_equal(info.default_opset, 17);
  assert_int_equal(info.n_opsets, 2);
  assert_string_equal(info.opsets[1].domain, "com.microsoft");
  assert_int_equal(info.node_count, 4);
  assert_int_equal(info.weight_count, 4);
  assert_int_equal(info.param_count, 512 + 256 + 8 + 5);
  assert_int_equal(info.weight_bytes, 4 * (512 + 256 + 8 + 5));
  assert_string_equal(info.producer_name, "mopt-tests");
  ops_seen s = {0};
  mopt_model_op_counts(m, op_cb, &s);
  assert_int_equal(s.n, 4);
  assert_string_equal(s.names[0], "Constant");
  assert_string_equal(s.names[1], "Gemm");
  assert_string_equal(s.names[2], "MatMul");
  assert_string_equal(s.names[3], "Relu");
  assert_int_equal(s.counts[3], 1);
  mopt_model_destroy(m);
  mopt_model_destroy(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_roundtrip_stable),
    cmocka_unit_test(test_unknown_fields_survive),
    cmocka_unit_test_setup_teardown(test_nested_unknown_fields, setup_tmp, teardown_tmp),
    cmocka_unit_test_setup_teardown(test_save_file_atomic, setup_tmp, teardown_tmp),
    cmocka_unit_test(test_backend_testdata),
    cmocka_unit_test(test_truncated),
    cmocka_unit_test(test_garbage),
    cmocka_unit_test(test_deep_nesting),
    cmocka_unit_test(test_subgraph_depth_limit),
    cmocka_unit_test(test_dims),
    cmocka_unit_test(test_data_length),
    cmocka_unit_test(test_wrong_dtype),
    cmocka_unit_test(test_cycle_and_missing),
    cmocka_unit_test_setup_teardown(test_external_data, setup_tmp, teardown_tmp),
    cmocka_unit_test(test_info),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
