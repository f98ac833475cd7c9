/* handlers.c — the api handlers driven directly (no HTTP) against a real store in a temp dir
 * and real ONNX files made by a small /usr/bin/python3 + python3-onnx script: upload with
 * dedup (201/200), digest checks, invalid models (422, nothing kept), content with ETag and
 * ranges, listing with cursors, delete with conflicts, job submit/dedup/429, get with ETag and
 * long-poll, cancel, health/ready/metrics and api_model_register_file. */
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "api_int.h"
#include "mopt.h"

/* ------------------------------------------------------------ fixture ---- */

static const char *MAKE_MODEL_PY =
    "import sys\n"
    "import numpy as np\n"
    "import onnx\n"
    "from onnx import helper, TensorProto, numpy_helper\n"
    "seed = int(sys.argv[2])\n"
    "r = np.random.default_rng(abs(seed))\n"
    "W = numpy_helper.from_array(r.standard_normal((64, 32)).astype(np.float32), 'W')\n"
    "b = numpy_helper.from_array(r.standard_normal(32).astype(np.float32), 'b')\n"
    "g = helper.make_graph([helper.make_node('MatMul', ['x', 'W'], ['m']),\n"
    "                       helper.make_node('Add', ['m', 'b'], ['y'])], 'g',\n"
    "    [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['N', 64])],\n"
    "    [helper.make_tensor_value_info('y', TensorProto.FLOAT, ['N', 32])], [W, b])\n"
    "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 13)])\n"
    "m.ir_version = 7\n"
    "onnx.checker.check_model(m)\n"
    "if seed < 0:\n"
    "    del m.graph.initializer[0].dims[:]\n"
    "    m.graph.initializer[0].dims.extend([2 ** 40, 2 ** 40])   # absurd dims, 8 KiB of data\n"
    "onnx.save(m, sys.argv[1])\n";

typedef struct blob { uint8_t *p; size_t n; } blob;

static char dir[256];
static api_ctx ctx;
static blob model_a, model_b, model_c;
static int n_submitted, n_cancel, n_changed, ready_value = 1;
static char last_cancel[40];

static void hk_submitted(void *h) { (void)h; n_submitted++; }
static void hk_cancel(void *h, const char *id) {
  (void)h;
  n_cancel++;
  snprintf(last_cancel, sizeof last_cancel, "%s", id);
}
static void hk_changed(void *h, const char *id) { (void)h; (void)id; n_changed++; }
static int hk_ready(void *h) { (void)h; return ready_value; }
static int hk_metrics(void *h, char **text, size_t *len) {
  (void)h;
  *text = strdup("# TYPE moptd_workers_running gauge\nmoptd_workers_running 3\n");
  *len = strlen(*text);
  return 0;
}

static blob read_file(const char *path) {
  blob b = {0};
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  b.n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  b.p = malloc(b.n);
  assert_int_equal(fread(b.p, 1, b.n, f), b.n);
  fclose(f);
  return b;
}

static blob make_model(int seed) {
  char script[300], out[300], cmd[800];
  snprintf(script, sizeof script, "%s/make_model.py", dir);
  snprintf(out, sizeof out, "%s/model_%d.onnx", dir, seed < 0 ? 1000 - seed : seed);
  FILE *f = fopen(script, "w");
  assert_non_null(f);
  fputs(MAKE_MODEL_PY, f);
  fclose(f);
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %d", script, out, seed);
  if (system(cmd) != 0) fail_msg("model generator failed: %s", cmd);
  blob b = read_file(out);
  unlink(out);
  return b;
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/moptd-api-handlers.XXXXXX");
  if (!mkdtemp(dir)) return -1;
  model_a = make_model(1);
  model_b = make_model(2);
  model_c = make_model(3);
  char data[300];
  snprintf(data, sizeof data, "%s/data", dir);
  memset(&ctx, 0, sizeof ctx);
  mopt_diag d = {0};
  if (store_open(data, &ctx.st, NULL, &d) != 0) {
    fprintf(stderr, "store_open: %s\n", d.msg);
    return -1;
  }
  ctx.limits.max_model_bytes = 1 << 20;
  ctx.limits.max_json_bytes = 1 << 16;
  ctx.limits.max_queued_jobs = 100;
  ctx.limits.max_wait_s = 30;
  ctx.limits.retry_after_s = 7;
  ctx.hooks.jobs_submitted = hk_submitted;
  ctx.hooks.job_cancel = hk_cancel;
  ctx.hooks.job_changed = hk_changed;
  ctx.hooks.ready = hk_ready;
  ctx.hooks.metrics = hk_metrics;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  store_close(ctx.st);
  free(model_a.p);
  free(model_b.p);
  free(model_c.p);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ fake adapter ---- */

typedef struct kv { const char *k, *v; } kv;
typedef struct fake { kv q[8]; size_t nq; kv h[8]; size_t nh; } fake;

static const char *fq(void *a, const char *k) {
  fake *f = a;
  for (size_t i = 0; i < f->nq; i++)
    if (strcmp(f->q[i].k, k) == 0) return f->q[i].v;
  return NULL;
}
static const char *fh(void *a, const char *k) {
  fake *f = a;
  for (size_t i = 0; i < f->nh; i++)
    if (strcasecmp(f->h[i].k, k) == 0) return f->h[i].v;
  return NULL;
}

static void req_init(api_request *r, fake *f, api_method m, const char *path) {
  memset(r, 0, sizeof *r);
  r->method = m;
  r->path = path;
  r->query = fq;
  r->header = fh;
  r->actx = f;
  r->scopes = API_SCOPE_READ | API_SCOPE_WRITE;
}

static void resp_free(api_response *r) {
  free(r->body);
  r->body = NULL;
  if (r->file_fd >= 0) close(r->file_fd);
  r->file_fd = -1;
}

static const char *resp_header(const api_response *r, const char *name) {
  for (size_t i = 0; i < r->n_headers; i++)
    if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
  return NULL;
}

static json_t *body_json(const api_response *r) {
  json_error_t je;
  json_t *v = json_loadb(r->body, r->body_len, 0, &je);
  if (!v) fail_msg("status %d body is not JSON: %.*s", r->status, (int)r->body_len, r->body);
  return v;
}

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static const char *error_code(const api_response *r, char *buf, size_t n) {
  json_t *v = body_json(r);
  snprintf(buf, n, "%s", jstr(json_object_get(v, "error"), "code"));
  json_decref(v);
  return buf;
}

/* Uploads bytes the way the server does (stream to a store_upload), then runs the handler. */
static void do_upload(const blob *b, fake *f, api_response *resp) {
  api_request req;
  req_init(&req, f, API_POST, "/v1/models");
  store_upload *u = NULL;
  assert_int_equal(store_upload_begin(ctx.st, &u), 0);
  if (b->n) assert_int_equal(store_upload_write(u, b->p, b->n), 0);
  assert_int_equal(store_upload_finish(u, req.upload_hex, &req.upload_size), 0);
  req.upload = u;
  api_response_init(resp);
  api_h_models_upload(&ctx, &req, resp);
  /* Every path publishes or aborts the temp file. */
  assert_int_equal(resp->upload_consumed, 1);
}

static void id_of(const blob *b, char id[80]) {
  char hex[65];
  mopt_sha256_hex(b->p, b->n, hex);
  snprintf(id, 80, "sha256:%s", hex);
}

static uint32_t count_models(void) {
  store_model items[64];
  uint32_t n = 0;
  char next[64];
  assert_int_equal(store_model_list(store_conn_get(ctx.st), NULL, "", 64, items, &n, next), 0);
  return n;
}

static int count_tmp(void) {
  char p[300];
  snprintf(p, sizeof p, "%s/data/tmp", dir);
  DIR *d = opendir(p);
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static int blob_exists(const char *id) {
  char p[1024];
  return store_blob_path(ctx.st, id + 7, p, sizeof p) == 0 && access(p, F_OK) == 0;
}

/* Base64 of the SHA-256 of b, for Digest headers. */
static void digest_b64(const blob *b, char out[64]) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char hex[65];
  uint8_t raw[33] = {0};
  mopt_sha256_hex(b->p, b->n, hex);
  for (int i = 0; i < 32; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    raw[i] = (uint8_t)v;
  }
  int o = 0;
  for (int i = 0; i < 33; i += 3) {
    uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)(i + 1 < 33 ? raw[i + 1] : 0) << 8 |
                 (uint32_t)(i + 2 < 33 ? raw[i + 2] : 0);
    out[o++] = tbl[v >> 18 & 63];
    out[o++] = tbl[v >> 12 & 63];
    out[o++] = tbl[v >> 6 & 63];
    out[o++] = tbl[v & 63];
  }
  out[43] = '=';   /* 32 bytes → 43 chars + one '=' */
  out[44] = 0;
}

/* ------------------------------------------------------------ models ---- */

static void test_upload_then_dedup(void **state) {
  (void)state;
  fake f = {.q = {{"name", "kws/tiny"}, {"version", "1.0"}}, .nq = 2};
  api_response r;
  do_upload(&model_a, &f, &r);
  assert_int_equal(r.status, 201);
  char id[80];
  id_of(&model_a, id);
  char loc[128];
  snprintf(loc, sizeof loc, "/v1/models/%s", id);
  assert_string_equal(resp_header(&r, "Location"), loc);
  json_t *m = body_json(&r);
  assert_string_equal(jstr(m, "id"), id);
  assert_string_equal(jstr(m, "name"), "kws/tiny");
  assert_string_equal(jstr(m, "version"), "1.0");
  assert_string_equal(jstr(m, "format"), "onnx");
  assert_int_equal(json_integer_value(json_object_get(m, "size")), model_a.n);
  assert_int_equal(json_integer_value(json_object_get(m, "ir_version")), 7);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(m, "opsets"), "")), 13);
  assert_int_equal(json_integer_value(json_object_get(m, "node_count")), 2);
  assert_int_equal(json_integer_value(json_object_get(m, "weight_count")), 2);
  assert_int_equal(json_integer_value(json_object_get(m, "param_count")), 64 * 32 + 32);
  assert_true(json_is_null(json_object_get(m, "parent")));
  assert_true(json_is_null(json_object_get(m, "job")));
  assert_int_equal(strlen(jstr(m, "created")), 24);
  char url[128];
  snprintf(url, sizeof url, "/v1/models/%s/content", id);
  assert_string_equal(jstr(m, "content_url"), url);
  json_decref(m);
  resp_free(&r);
  assert_true(blob_exists(id));
  assert_int_equal(count_tmp(), 0);

  /* Same bytes under another name: 200 with the stored model, nothing new. */
  uint32_t before = count_models();
  fake f2 = {.q = {{"name", "other"}}, .nq = 1};
  do_upload(&model_a, &f2, &r);
  assert_int_equal(r.status, 200);
  assert_null(resp_header(&r, "Location"));
  m = body_json(&r);
  assert_string_equal(jstr(m, "id"), id);
  assert_string_equal(jstr(m, "name"), "kws/tiny");
  json_decref(m);
  resp_free(&r);
  assert_int_equal(count_models(), before);
  assert_int_equal(count_tmp(), 0);
}

static void test_upload_digests(void **state) {
  (void)state;
  uint32_t before = count_models();
  char id[80], code[48];
  id_of(&model_b, id);
  /* Wrong X-Content-SHA256 → 400 digest_mismatch, nothing kept. */
  fake f = {.h = {{"X-Content-SHA256", "0000000000000000000000000000000000000000000000000000000000000000"}},
            .nh = 1};
  api_response r;
  do_upload(&model_b, &f, &r);
  assert_int_equal(r.status, 400);
  assert_string_equal(error_code(&r, code, sizeof code), "digest_mismatch");
  resp_free(&r);
  assert_int_equal(count_models(), before);
  assert_false(blob_exists(id));
  assert_int_equal(count_tmp(), 0);
  /* Digest of other bytes → 400. */
  char b64[64];
  digest_b64(&model_a, b64);
  char hdr[100];
  snprintf(hdr, sizeof hdr, "sha-256=%s", b64);
  fake f2 = {.h = {{"Digest", hdr}}, .nh = 1};
  do_upload(&model_b, &f2, &r);
  assert_int_equal(r.status, 400);
  assert_string_equal(error_code(&r, code, sizeof code), "digest_mismatch");
  resp_free(&r);
  assert_false(blob_exists(id));
  /* Malformed digest value → 400 bad_request. */
  fake f3 = {.h = {{"Digest", "sha-256=!!!"}}, .nh = 1};
  do_upload(&model_b, &f3, &r);
  assert_int_equal(r.status, 400);
  assert_string_equal(error_code(&r, code, sizeof code), "bad_request");
  resp_free(&r);
  /* Right digests (both headers, uppercase hex, md5 alongside) → 201. */
  digest_b64(&model_b, b64);
  snprintf(hdr, sizeof hdr, "md5=abcd, SHA-256=%s", b64);
  char hex[65];
  mopt_sha256_hex(model_b.p, model_b.n, hex);
  for (char *p = hex; *p; p++)
    if (*p >= 'a' && *p <= 'f') *p = (char)(*p - 32);
  fake f4 = {.h = {{"Digest", hdr}, {"X-Content-SHA256", hex}}, .nh = 2};
  do_upload(&model_b, &f4, &r);
  assert_int_equal(r.status, 201);
  resp_free(&r);
  assert_true(blob_exists(id));
  assert_int_equal(count_models(), before + 1);
}

static void test_upload_invalid(void **state) {
  (void)state;
  uint32_t before = count_models();
  char code[48];
  api_response r;
  fake f = {0};
  /* Empty body. */
  blob empty = {0};
  do_upload(&empty, &f, &r);
  assert_int_equal(r.status, 422);
  json_t *v = body_json(&r);
  assert_non_null(strstr(jstr(json_object_get(v, "error"), "message"), "empty"));
  json_decref(v);
  resp_free(&r);
  /* Random bytes. */
  uint8_t junk[4096];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 2654435761u >> 13);
  blob bj = {junk, sizeof junk};
  do_upload(&bj, &f, &r);
  assert_int_equal(r.status, 422);
  assert_string_equal(error_code(&r, code, sizeof code), "invalid_model");
  resp_free(&r);
  /* Truncated model. */
  blob trunc = {model_c.p, model_c.n - 100};
  do_upload(&trunc, &f, &r);
  assert_int_equal(r.status, 422);
  v = body_json(&r);
  json_t *e = json_object_get(v, "error");
  assert_true(strlen(jstr(e, "message")) > 0);
  json_decref(v);
  resp_free(&r);
  /* Absurd dims (product overflows): 422 invalid_model naming the tensor, not 413. */
  blob absurd = make_model(-1);
  do_upload(&absurd, &f, &r);
  assert_int_equal(r.status, 422);
  v = body_json(&r);
  e = json_object_get(v, "error");
  assert_string_equal(jstr(e, "code"), "invalid_model");
  assert_non_null(strstr(jstr(e, "message"), "'W'"));
  json_decref(v);
  resp_free(&r);
  free(absurd.p);
  /* Bad names and versions. */
  const char *bad_names[] = {"../etc", "/abs", "a b", "", "x//y"};
  for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
    fake fn = {.q = {{"name", bad_names[i]}}, .nq = 1};
    do_upload(&model_c, &fn, &r);
    assert_int_equal(r.status, 400);
    v = body_json(&r);
    assert_string_equal(jstr(json_object_get(json_object_get(v, "error"), "detail"), "where"),
                        "name");
    json_decref(v);
    resp_free(&r);
  }
  fake fv = {.q = {{"name", "ok"}, {"version", "1/../2"}}, .nq = 2};
  do_upload(&model_c, &fv, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  assert_int_equal(count_models(), before);
  assert_int_equal(count_tmp(), 0);
  char id[80];
  id_of(&model_c, id);
  assert_false(blob_exists(id));
  /* No upload at all (adapter without a body). */
  api_request req;
  req_init(&req, &f, API_POST, "/v1/models");
  api_response_init(&r);
  api_h_models_upload(&ctx, &req, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
}

static void get_model(const char *id, api_response *r) {
  fake f = {0};
  api_request req;
  req_init(&req, &f, API_GET, "/v1/models/x");
  req.params[0] = id;
  req.n_params = 1;
  api_response_init(r);
  api_h_models_get(&ctx, &req, r);
}

static void test_get_model(void **state) {
  (void)state;
  char id[80];
  id_of(&model_a, id);
  api_response r;
  get_model(id, &r);
  assert_int_equal(r.status, 200);
  json_t *m = body_json(&r);
  assert_string_equal(jstr(m, "id"), id);
  json_decref(m);
  resp_free(&r);
  get_model("sha256:0000000000000000000000000000000000000000000000000000000000000000", &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
  get_model("sha256:XYZ", &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  get_model("../../moptd.db", &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
}

static void content(const char *id, fake *f, api_method m, api_response *r) {
  api_request req;
  req_init(&req, f, m, "/v1/models/x/content");
  req.params[0] = id;
  req.n_params = 1;
  api_response_init(r);
  api_h_models_content(&ctx, &req, r);
}

static void expect_bytes(const api_response *r, const blob *b, uint64_t off, uint64_t len) {
  assert_true(r->file_fd >= 0);
  assert_int_equal(r->file_offset, off);
  assert_int_equal(r->file_length, len);
  uint8_t *buf = malloc(len ? len : 1);
  assert_int_equal(pread(r->file_fd, buf, len, (off_t)off), (ssize_t)len);
  assert_memory_equal(buf, b->p + off, len);
  free(buf);
}

static void test_content(void **state) {
  (void)state;
  char id[80], etag[80], cr[80];
  id_of(&model_a, id);
  snprintf(etag, sizeof etag, "\"%s\"", id + 7);
  size_t n = model_a.n;
  fake f = {0};
  api_response r;
  content(id, &f, API_GET, &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.content_type, "application/octet-stream");
  assert_string_equal(resp_header(&r, "ETag"), etag);
  assert_string_equal(resp_header(&r, "Accept-Ranges"), "bytes");
  assert_non_null(strstr(resp_header(&r, "Cache-Control"), "immutable"));
  expect_bytes(&r, &model_a, 0, n);
  resp_free(&r);
  content(id, &f, API_HEAD, &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.file_length, n);
  resp_free(&r);

  fake inm = {.h = {{"If-None-Match", etag}}, .nh = 1};
  content(id, &inm, API_GET, &r);
  assert_int_equal(r.status, 304);
  assert_int_equal(r.file_fd, -1);
  assert_int_equal(r.body_len, 0);
  assert_string_equal(resp_header(&r, "ETag"), etag);
  resp_free(&r);
  fake inm2 = {.h = {{"If-None-Match", "\"0000\""}}, .nh = 1};
  content(id, &inm2, API_GET, &r);
  assert_int_equal(r.status, 200);
  resp_free(&r);

  fake rg = {.h = {{"Range", "bytes=10-19"}}, .nh = 1};
  content(id, &rg, API_GET, &r);
  assert_int_equal(r.status, 206);
  snprintf(cr, sizeof cr, "bytes 10-19/%zu", n);
  assert_string_equal(resp_header(&r, "Content-Range"), cr);
  expect_bytes(&r, &model_a, 10, 10);
  resp_free(&r);
  fake suffix = {.h = {{"Range", "bytes=-16"}}, .nh = 1};
  content(id, &suffix, API_GET, &r);
  assert_int_equal(r.status, 206);
  expect_bytes(&r, &model_a, n - 16, 16);
  resp_free(&r);

  char unsat[64];
  snprintf(unsat, sizeof unsat, "bytes=%zu-", n);
  fake bad = {.h = {{"Range", unsat}}, .nh = 1};
  content(id, &bad, API_GET, &r);
  assert_int_equal(r.status, 416);
  assert_int_equal(r.file_fd, -1);
  snprintf(cr, sizeof cr, "bytes */%zu", n);
  assert_string_equal(resp_header(&r, "Content-Range"), cr);
  char code[48];
  assert_string_equal(error_code(&r, code, sizeof code), "range_not_satisfiable");
  resp_free(&r);

  fake multi = {.h = {{"Range", "bytes=0-1,5-9"}}, .nh = 1};
  content(id, &multi, API_GET, &r);
  assert_int_equal(r.status, 200);
  expect_bytes(&r, &model_a, 0, n);
  resp_free(&r);

  fake ifr_ok = {.h = {{"Range", "bytes=0-3"}, {"If-Range", etag}}, .nh = 2};
  content(id, &ifr_ok, API_GET, &r);
  assert_int_equal(r.status, 206);
  resp_free(&r);
  fake ifr_bad = {.h = {{"Range", "bytes=0-3"}, {"If-Range", "\"other\""}}, .nh = 2};
  content(id, &ifr_bad, API_GET, &r);
  assert_int_equal(r.status, 200);
  expect_bytes(&r, &model_a, 0, n);
  resp_free(&r);
  fake ifr_weak = {.h = {{"Range", "bytes=0-3"}, {"If-Range", "W/\"x\""}}, .nh = 2};
  content(id, &ifr_weak, API_GET, &r);
  assert_int_equal(r.status, 200);
  resp_free(&r);

  content("sha256:1111111111111111111111111111111111111111111111111111111111111111", &f,
          API_GET, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
}

static void list_models(fake *f, api_response *r) {
  api_request req;
  req_init(&req, f, API_GET, "/v1/models");
  api_response_init(r);
  api_h_models_list(&ctx, &req, r);
}

static void test_list_models(void **state) {
  (void)state;
  api_response r;
  fake f = {.q = {{"limit", "1"}}, .nq = 1};
  list_models(&f, &r);
  assert_int_equal(r.status, 200);
  json_t *v = body_json(&r);
  assert_int_equal(json_array_size(json_object_get(v, "items")), 1);
  const char *first = jstr(json_array_get(json_object_get(v, "items"), 0), "id");
  char first_id[80];
  snprintf(first_id, sizeof first_id, "%s", first);
  const char *cur = jstr(v, "next_cursor");
  assert_non_null(cur);
  char cursor[64];
  snprintf(cursor, sizeof cursor, "%s", cur);
  json_decref(v);
  resp_free(&r);
  fake f2 = {.q = {{"limit", "1"}, {"cursor", cursor}}, .nq = 2};
  list_models(&f2, &r);
  assert_int_equal(r.status, 200);
  v = body_json(&r);
  assert_int_equal(json_array_size(json_object_get(v, "items")), 1);
  assert_string_not_equal(jstr(json_array_get(json_object_get(v, "items"), 0), "id"), first_id);
  json_decref(v);
  resp_free(&r);
  /* Name filter. */
  fake f3 = {.q = {{"name", "kws/tiny"}}, .nq = 1};
  list_models(&f3, &r);
  v = body_json(&r);
  assert_int_equal(json_array_size(json_object_get(v, "items")), 1);
  assert_true(json_is_null(json_object_get(v, "next_cursor")));
  json_decref(v);
  resp_free(&r);
  /* Bad parameters. */
  const char *bad_limits[] = {"0", "1001", "-1", "ten", ""};
  for (size_t i = 0; i < 5; i++) {
    fake fb = {.q = {{"limit", bad_limits[i]}}, .nq = 1};
    list_models(&fb, &r);
    assert_int_equal(r.status, 400);
    resp_free(&r);
  }
  fake fc = {.q = {{"cursor", "garbage"}}, .nq = 1};
  list_models(&fc, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  fake fn = {.q = {{"name", "../x"}}, .nq = 1};
  list_models(&fn, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
}

/* ------------------------------------------------------------ jobs ---- */

static void submit(const char *json, api_response *r) {
  fake f = {0};
  api_request req;
  req_init(&req, &f, API_POST, "/v1/jobs");
  req.body = json;
  req.body_len = json ? strlen(json) : 0;
  api_response_init(r);
  api_h_jobs_create(&ctx, &req, r);
}

static void job_get(const char *id, fake *f, int64_t waited, api_response *r) {
  api_request req;
  req_init(&req, f, API_GET, "/v1/jobs/x");
  req.params[0] = id;
  req.n_params = 1;
  req.waited_deadline_ms = waited;
  api_response_init(r);
  api_h_jobs_get(&ctx, &req, r);
}

static void job_cancel(const char *id, api_response *r) {
  fake f = {0};
  api_request req;
  req_init(&req, &f, API_POST, "/v1/jobs/x/cancel");
  req.params[0] = id;
  req.n_params = 1;
  api_response_init(r);
  api_h_jobs_cancel(&ctx, &req, r);
}

static void spec_for(const blob *b, const char *passes, char *out, size_t n) {
  char id[80];
  id_of(b, id);
  snprintf(out, n, "{\"model\":\"%s\",\"passes\":%s}", id, passes);
}

static void test_job_submit_and_dedup(void **state) {
  (void)state;
  char spec[512], id[40], id2[40];
  spec_for(&model_a, "[{\"op\":\"prune\",\"sparsity\":0.5}]", spec, sizeof spec);
  int before = n_submitted;
  api_response r;
  submit(spec, &r);
  assert_int_equal(r.status, 202);
  assert_int_equal(n_submitted, before + 1);
  json_t *j = body_json(&r);
  snprintf(id, sizeof id, "%s", jstr(j, "id"));
  assert_true(api_job_id_valid(id));
  assert_string_equal(jstr(j, "state"), "queued");
  char loc[80];
  snprintf(loc, sizeof loc, "/v1/jobs/%s", id);
  assert_string_equal(resp_header(&r, "Location"), loc);
  json_t *sp = json_object_get(j, "spec");
  assert_true(json_is_object(sp));
  assert_null(json_object_get(sp, "model"));
  assert_string_equal(jstr(json_array_get(json_object_get(sp, "passes"), 0), "pattern"),
                      "unstructured");
  assert_true(json_is_null(json_object_get(j, "output")));
  assert_true(json_is_null(json_object_get(j, "started")));
  assert_int_equal(strlen(jstr(j, "created")), 24);
  json_decref(j);
  resp_free(&r);

  /* The stored key is sha256(model + "\n" + normalized + "\n" + version). */
  store_job row;
  memset(&row, 0, sizeof row);
  assert_int_equal(store_job_get(store_conn_get(ctx.st), id, &row), 0);
  char mid[80], keybuf[1024], key[65];
  id_of(&model_a, mid);
  snprintf(keybuf, sizeof keybuf, "%s\n%s\n%s", mid, row.spec, MOPT_VERSION);
  mopt_sha256_hex((const uint8_t *)keybuf, strlen(keybuf), key);
  assert_string_equal(row.key, key);
  store_job_free(&row);

  /* Not yet succeeded: an equal spec (other spelling) queues another job. */
  char spec2[512];
  spec_for(&model_a, "[{\"sparsity\":0.5,\"op\":\"prune\",\"scope\":\"per_tensor\"}]", spec2,
           sizeof spec2);
  submit(spec2, &r);
  assert_int_equal(r.status, 202);
  j = body_json(&r);
  snprintf(id2, sizeof id2, "%s", jstr(j, "id"));
  json_decref(j);
  resp_free(&r);
  assert_string_not_equal(id, id2);

  /* Run the first to success (as the scheduler would), then resubmit: 200 with that job. */
  store_conn *c = store_conn_get(ctx.st);
  store_job claimed;
  memset(&claimed, 0, sizeof claimed);
  assert_int_equal(store_job_claim(c, &claimed), 0);
  assert_string_equal(claimed.id, id);
  char out_id[80];
  id_of(&model_b, out_id);
  assert_int_equal(store_job_succeed(c, id, out_id, "{\"totals\":{\"bytes\":1}}"), 0);
  store_job_free(&claimed);
  before = n_submitted;
  submit(spec2, &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(n_submitted, before);
  j = body_json(&r);
  assert_string_equal(jstr(j, "id"), id);
  assert_string_equal(jstr(j, "state"), "succeeded");
  assert_string_equal(jstr(j, "output"), out_id);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(j, "report"),
                                                                      "totals"), "bytes")), 1);
  json_decref(j);
  resp_free(&r);
}

static void test_job_submit_errors(void **state) {
  (void)state;
  api_response r;
  char code[48], spec[512];
  submit(NULL, &r);
  assert_int_equal(r.status, 400);
  assert_string_equal(error_code(&r, code, sizeof code), "malformed_json");
  resp_free(&r);
  submit("{\"passes\":[", &r);
  assert_int_equal(r.status, 400);
  assert_string_equal(error_code(&r, code, sizeof code), "malformed_json");
  resp_free(&r);
  spec_for(&model_a, "[{\"op\":\"prune\",\"sparsity\":2}]", spec, sizeof spec);
  submit(spec, &r);
  assert_int_equal(r.status, 400);
  json_t *v = body_json(&r);
  json_t *e = json_object_get(v, "error");
  assert_string_equal(jstr(e, "code"), "invalid_spec");
  assert_string_equal(jstr(json_object_get(e, "detail"), "where"), "/passes/0/sparsity");
  json_decref(v);
  resp_free(&r);
  submit("{\"passes\":[]}", &r);
  assert_int_equal(r.status, 400);
  v = body_json(&r);
  assert_string_equal(jstr(json_object_get(json_object_get(v, "error"), "detail"), "where"),
                      "/model");
  json_decref(v);
  resp_free(&r);
  submit("{\"model\":\"sha256:2222222222222222222222222222222222222222222222222222222222222222\"}",
         &r);
  assert_int_equal(r.status, 404);
  v = body_json(&r);
  e = json_object_get(v, "error");
  assert_string_equal(jstr(e, "code"), "not_found");
  assert_string_equal(jstr(json_object_get(e, "detail"), "where"), "/model");
  assert_non_null(strstr(jstr(e, "message"), "sha256:2222"));
  json_decref(v);
  resp_free(&r);
  /* 10,000-deep nesting is a 400, not a crash. */
  char *deep = malloc(20010);
  memset(deep, '[', 10000);
  memset(deep + 10000, ']', 10000);
  deep[20000] = 0;
  submit(deep, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  free(deep);
}

static void test_job_queue_full(void **state) {
  (void)state;
  uint64_t counts[5];
  assert_int_equal(store_job_counts(store_conn_get(ctx.st), counts), 0);
  uint32_t saved = ctx.limits.max_queued_jobs;
  ctx.limits.max_queued_jobs = (uint32_t)counts[STORE_JOB_QUEUED];
  char spec[512];
  spec_for(&model_a, "[{\"op\":\"fp16\"}]", spec, sizeof spec);
  api_response r;
  submit(spec, &r);
  assert_int_equal(r.status, 429);
  assert_string_equal(resp_header(&r, "Retry-After"), "7");
  char code[48];
  assert_string_equal(error_code(&r, code, sizeof code), "busy");
  resp_free(&r);
  ctx.limits.max_queued_jobs = saved;
  submit(spec, &r);
  assert_int_equal(r.status, 202);
  resp_free(&r);
}

static void new_job(const char *passes, char id[40]) {
  char spec[512];
  spec_for(&model_a, passes, spec, sizeof spec);
  api_response r;
  submit(spec, &r);
  assert_int_equal(r.status, 202);
  json_t *j = body_json(&r);
  snprintf(id, 40, "%s", jstr(j, "id"));
  json_decref(j);
  resp_free(&r);
}

static void drain_queue(void) {
  store_conn *c = store_conn_get(ctx.st);
  store_job tmp;
  memset(&tmp, 0, sizeof tmp);
  while (store_job_claim(c, &tmp) == 0) {
    store_job_fail(c, tmp.id, NULL);
    store_job_free(&tmp);
  }
}

static void test_job_get_etag_and_wait(void **state) {
  (void)state;
  char id[40];
  drain_queue();
  new_job("[{\"op\":\"cluster\",\"clusters\":4}]", id);
  fake none = {0};
  api_response r;
  job_get(id, &none, 0, &r);
  assert_int_equal(r.status, 200);
  const char *et = resp_header(&r, "ETag");
  assert_non_null(et);
  char etag[80];
  snprintf(etag, sizeof etag, "%s", et);
  store_job row;
  memset(&row, 0, sizeof row);
  assert_int_equal(store_job_get(store_conn_get(ctx.st), id, &row), 0);
  char want[80];
  snprintf(want, sizeof want, "\"%s.%llu\"", id, (unsigned long long)row.rev);
  assert_string_equal(etag, want);
  store_job_free(&row);
  json_t *j = body_json(&r);
  assert_string_equal(jstr(j, "id"), id);
  assert_int_equal(json_object_size(j) >= 12, 1);
  const char *keys[] = {"id", "state", "progress", "step", "created", "started", "finished",
                        "model", "spec", "output", "report", "error"};
  for (size_t i = 0; i < 12; i++) assert_non_null(json_object_get(j, keys[i]));
  json_decref(j);
  resp_free(&r);

  fake inm = {.h = {{"If-None-Match", etag}}, .nh = 1};
  job_get(id, &inm, 0, &r);
  assert_int_equal(r.status, 304);
  assert_int_equal(r.body_len, 0);
  assert_string_equal(resp_header(&r, "ETag"), etag);
  resp_free(&r);

  /* Long-poll, first call: asks the adapter to wait on the current rev. */
  fake w = {.q = {{"wait", "5"}}, .nq = 1, .h = {{"If-None-Match", etag}}, .nh = 1};
  int64_t t0 = api_now_ms();
  job_get(id, &w, 0, &r);
  assert_string_equal(r.wait_job, id);
  assert_true(r.wait_deadline_ms >= t0 + 5000 && r.wait_deadline_ms <= api_now_ms() + 5000);
  assert_null(r.body);
  uint64_t rev = r.wait_rev;
  int64_t deadline = r.wait_deadline_ms;
  resp_free(&r);
  /* Re-invoked after the deadline with no change: 304. */
  job_get(id, &w, deadline, &r);
  assert_int_equal(r.status, 304);
  assert_int_equal(r.wait_job[0], 0);
  resp_free(&r);
  /* The job changes (progress); the re-invocation answers 200 with the new ETag. */
  assert_int_equal(store_job_claim(store_conn_get(ctx.st), &row), 0);
  assert_string_equal(row.id, id);
  store_job_free(&row);
  job_get(id, &w, deadline, &r);
  assert_int_equal(r.status, 200);
  assert_string_not_equal(resp_header(&r, "ETag"), etag);
  j = body_json(&r);
  assert_int_equal(json_integer_value(json_object_get(j, "rev")) > (json_int_t)rev, 1);
  json_decref(j);
  resp_free(&r);
  /* Without If-None-Match: waits on the current rev too. */
  fake w2 = {.q = {{"wait", "100000"}}, .nq = 1};
  job_get(id, &w2, 0, &r);
  assert_string_equal(r.wait_job, id);
  assert_true(r.wait_deadline_ms <= api_now_ms() + 30 * 1000);   /* capped at max_wait_s */
  resp_free(&r);
  /* With a stale If-None-Match: answers at once. */
  job_get(id, &w, 0, &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.wait_job[0], 0);
  resp_free(&r);
  /* A finished job never waits. */
  assert_int_equal(store_job_fail(store_conn_get(ctx.st), id,
                                  "{\"code\":\"worker_failed\",\"message\":\"x\"}"), 0);
  job_get(id, &w2, 0, &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.wait_job[0], 0);
  j = body_json(&r);
  assert_string_equal(jstr(j, "state"), "failed");
  assert_string_equal(jstr(json_object_get(j, "error"), "code"), "worker_failed");
  json_decref(j);
  resp_free(&r);

  fake bw = {.q = {{"wait", "soon"}}, .nq = 1};
  job_get(id, &bw, 0, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  job_get("job_zzzzzzzzzzzzzzzzzzzzzzzzzz", &none, 0, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
  job_get("job_../../x", &none, 0, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
}

static void test_job_cancel(void **state) {
  (void)state;
  char queued[40], running[40];
  /* Drain queued jobs left by earlier tests so claim picks ours. */
  drain_queue();
  store_conn *c = store_conn_get(ctx.st);
  store_job tmp;
  memset(&tmp, 0, sizeof tmp);
  new_job("[{\"op\":\"quantize\",\"dtype\":\"int4\"}]", running);
  assert_int_equal(store_job_claim(c, &tmp), 0);
  assert_string_equal(tmp.id, running);
  store_job_free(&tmp);
  new_job("[{\"op\":\"quantize\",\"dtype\":\"uint8\"}]", queued);

  int changed = n_changed, cancels = n_cancel;
  api_response r;
  job_cancel(queued, &r);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_string_equal(jstr(j, "state"), "cancelled");
  json_decref(j);
  resp_free(&r);
  assert_int_equal(n_changed, changed + 1);
  assert_int_equal(n_cancel, cancels);   /* nothing to kill */

  job_cancel(running, &r);
  assert_int_equal(r.status, 200);
  j = body_json(&r);
  assert_string_equal(jstr(j, "state"), "running");
  assert_true(json_is_true(json_object_get(j, "cancel_requested")));
  json_decref(j);
  resp_free(&r);
  assert_int_equal(n_cancel, cancels + 1);
  assert_string_equal(last_cancel, running);

  job_cancel(queued, &r);
  assert_int_equal(r.status, 409);
  char code[48];
  assert_string_equal(error_code(&r, code, sizeof code), "conflict");
  resp_free(&r);
  job_cancel("job_zzzzzzzzzzzzzzzzzzzzzzzzzz", &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
}

static void test_job_list(void **state) {
  (void)state;
  fake f = {.q = {{"state", "cancelled"}}, .nq = 1};
  api_request req;
  req_init(&req, &f, API_GET, "/v1/jobs");
  api_response r;
  api_response_init(&r);
  api_h_jobs_list(&ctx, &req, &r);
  assert_int_equal(r.status, 200);
  json_t *v = body_json(&r);
  json_t *items = json_object_get(v, "items");
  assert_true(json_array_size(items) >= 1);
  for (size_t i = 0; i < json_array_size(items); i++)
    assert_string_equal(jstr(json_array_get(items, i), "state"), "cancelled");
  json_decref(v);
  resp_free(&r);
  char mid[80];
  id_of(&model_a, mid);
  fake f2 = {.q = {{"model", mid}, {"limit", "2"}}, .nq = 2};
  req_init(&req, &f2, API_GET, "/v1/jobs");
  api_response_init(&r);
  api_h_jobs_list(&ctx, &req, &r);
  v = body_json(&r);
  assert_int_equal(json_array_size(json_object_get(v, "items")), 2);
  assert_true(json_is_string(json_object_get(v, "next_cursor")));
  json_decref(v);
  resp_free(&r);
  fake f3 = {.q = {{"state", "done"}}, .nq = 1};
  req_init(&req, &f3, API_GET, "/v1/jobs");
  api_response_init(&r);
  api_h_jobs_list(&ctx, &req, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  fake f4 = {.q = {{"model", "abc"}}, .nq = 1};
  req_init(&req, &f4, API_GET, "/v1/jobs");
  api_response_init(&r);
  api_h_jobs_list(&ctx, &req, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
}

static void del_model(const char *id, api_response *r) {
  fake f = {0};
  api_request req;
  req_init(&req, &f, API_DELETE, "/v1/models/x");
  req.params[0] = id;
  req.n_params = 1;
  api_response_init(r);
  api_h_models_delete(&ctx, &req, r);
}

static void test_delete(void **state) {
  (void)state;
  char ida[80], idc[80];
  id_of(&model_a, ida);
  api_response r;
  del_model(ida, &r);   /* jobs refer to it */
  assert_int_equal(r.status, 409);
  resp_free(&r);
  assert_true(blob_exists(ida));
  fake f = {.q = {{"name", "doomed"}}, .nq = 1};
  do_upload(&model_c, &f, &r);
  assert_int_equal(r.status, 201);
  resp_free(&r);
  id_of(&model_c, idc);
  del_model(idc, &r);
  assert_int_equal(r.status, 204);
  assert_int_equal(r.body_len, 0);
  resp_free(&r);
  assert_false(blob_exists(idc));
  get_model(idc, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
  del_model(idc, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
  /* And it can come back. */
  do_upload(&model_c, &f, &r);
  assert_int_equal(r.status, 201);
  resp_free(&r);
}

/* ------------------------------------------------------------ ops ---- */

static void test_health_ready_metrics(void **state) {
  (void)state;
  fake f = {0};
  api_request req;
  req_init(&req, &f, API_GET, "/healthz");
  api_response r;
  api_response_init(&r);
  api_h_healthz(&ctx, &req, &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"status\":\"ok\"}");
  resp_free(&r);
  api_response_init(&r);
  api_h_readyz(&ctx, &req, &r);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  ready_value = 0;
  api_response_init(&r);
  api_h_readyz(&ctx, &req, &r);
  assert_int_equal(r.status, 503);
  resp_free(&r);
  ready_value = 1;
  api_response_init(&r);
  api_h_metrics(&ctx, &req, &r);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.content_type, "text/plain; version=0.0.4"));
  uint64_t counts[5];
  assert_int_equal(store_job_counts(store_conn_get(ctx.st), counts), 0);
  char line[80];
  snprintf(line, sizeof line, "\nmoptd_jobs{state=\"cancelled\"} %llu\n",
           (unsigned long long)counts[STORE_JOB_CANCELLED]);
  assert_non_null(strstr(r.body, line));
  assert_non_null(strstr(r.body, "# TYPE moptd_jobs gauge\n"));
  assert_non_null(strstr(r.body, "\nmoptd_store_bytes "));
  assert_non_null(strstr(r.body, "\nmoptd_workers_running 3\n"));
  assert_int_equal(r.body[r.body_len - 1], '\n');
  resp_free(&r);
}

static void test_register_file(void **state) {
  (void)state;
  char path[512], ida[80];
  id_of(&model_a, ida);
  store_job any;
  memset(&any, 0, sizeof any);
  store_job list[1];
  uint32_t n = 0;
  char next[64];
  assert_int_equal(store_job_list(store_conn_get(ctx.st), -1, NULL, "", 1, list, &n, next), 0);
  assert_int_equal(n, 1);
  blob out = make_model(4);
  assert_int_equal(store_tmp_path(ctx.st, ".onnx", path, sizeof path), 0);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(out.p, 1, out.n, f), out.n);
  fclose(f);
  store_model m;
  int created = 0;
  mopt_diag d = {0};
  assert_int_equal(api_model_register_file(&ctx, path, "kws/tiny", "1.0-int8", ida, list[0].id,
                                           &m, &created, &d), 0);
  assert_int_equal(created, 1);
  char idout[80];
  id_of(&out, idout);
  assert_string_equal(m.id, idout);
  assert_string_equal(m.parent, ida);
  assert_string_equal(m.job, list[0].id);
  assert_int_equal(m.size, out.n);
  assert_int_equal(access(path, F_OK), -1);   /* moved into the store */
  assert_true(blob_exists(idout));
  api_response r;
  get_model(idout, &r);
  json_t *v = body_json(&r);
  assert_string_equal(jstr(v, "parent"), ida);
  assert_string_equal(jstr(v, "job"), list[0].id);
  json_decref(v);
  resp_free(&r);
  store_job_free(&list[0]);

  /* Not a model: error with a diag, temp file removed, nothing indexed. */
  uint32_t before = count_models();
  assert_int_equal(store_tmp_path(ctx.st, ".onnx", path, sizeof path), 0);
  f = fopen(path, "wb");
  fputs("definitely not protobuf \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", f);
  fclose(f);
  int rc = api_model_register_file(&ctx, path, "x", "1", NULL, NULL, &m, &created, &d);
  assert_true(rc == MOPT_EPARSE || rc == MOPT_EMODEL);
  assert_true(strlen(d.msg) > 0);
  assert_int_equal(access(path, F_OK), -1);
  assert_int_equal(count_models(), before);
  free(out.p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_upload_then_dedup),
    cmocka_unit_test(test_upload_digests),
    cmocka_unit_test(test_upload_invalid),
    cmocka_unit_test(test_get_model),
    cmocka_unit_test(test_content),
    cmocka_unit_test(test_list_models),
    cmocka_unit_test(test_job_submit_and_dedup),
    cmocka_unit_test(test_job_submit_errors),
    cmocka_unit_test(test_job_queue_full),
    cmocka_unit_test(test_job_get_etag_and_wait),
    cmocka_unit_test(test_job_cancel),
    cmocka_unit_test(test_job_list),
    cmocka_unit_test(test_delete),
    cmocka_unit_test(test_health_ready_metrics),
    cmocka_unit_test(test_register_file),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
