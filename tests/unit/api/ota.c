/* ota.c — the OTA handlers and the signing key driven directly (no HTTP) against a real store:
 * key file created once with mode 0600 and reused, refused when readable by others or
 * corrupted; releases publish/rollback/history and the payload rows they queue; manifests
 * signed over the exact "signed" bytes (mopt_manifest_verify accepts them, a flipped byte
 * does not), payloads smallest first, up-to-date devices, unknown `have`, the long-poll request
 * on a pending payload's key and the 503 after the deadline; payload lookups by digest.
 */
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
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
#include "payload.h"

static char dir[128];
static api_ctx ctx;
static const char *q_have;

static const char *fq(void *a, const char *k) {
  (void)a;
  return strcmp(k, "have") == 0 ? q_have : NULL;
}
static const char *fh(void *a, const char *k) {
  (void)a;
  (void)k;
  return NULL;
}

static void model_id(char out[72], unsigned n) { snprintf(out, 72, "sha256:%064x", n); }

static void put_model(unsigned n, uint64_t size) {
  store_conn *c = store_conn_get(ctx.st);
  char id[72], d[PATH_MAX], path[PATH_MAX + 80];
  model_id(id, n);
  snprintf(d, sizeof d, "%s/blobs/%.2s", store_data_dir(ctx.st), id + 7);
  mkdir(d, 0750);
  snprintf(path, sizeof path, "%s/%s", d, id + 7);
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  fprintf(fp, "blob %u", n);
  fclose(fp);
  store_model m;
  memset(&m, 0, sizeof m);
  memcpy(m.id, id, sizeof m.id);
  snprintf(m.name, sizeof m.name, "m");
  m.size = size;
  m.created = 1;
  int created = 0;
  assert_int_equal(store_model_put(c, &m, &created), 0);
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/moptd-api-ota.XXXXXX");
  if (!mkdtemp(dir)) return -1;
  memset(&ctx, 0, sizeof ctx);
  mopt_diag d = {0};
  if (store_open(dir, &ctx.st, NULL, &d) != 0) return -1;
  ctx.limits.ota_wait_s = 10;   /* the config table's default */
  return 0;
}

static int teardown(void **state) {
  (void)state;
  store_close(ctx.st);
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void call(api_handler_fn fn, api_method m, const char *p0, const char *p1,
                 const char *body, int64_t waited, api_response *r) {
  api_request q;
  memset(&q, 0, sizeof q);
  q.method = m;
  q.path = "/test";
  q.params[0] = p0;
  q.params[1] = p1;
  q.n_params = p1 ? 2 : 1;
  q.query = fq;
  q.header = fh;
  q.body = body;
  q.body_len = body ? strlen(body) : 0;
  q.scopes = ~0u;
  q.waited_deadline_ms = waited;
  api_response_init(r);
  fn(&ctx, &q, r);
}

static void resp_free(api_response *r) {
  free(r->body);
  if (r->file_fd >= 0) close(r->file_fd);
}

static void test_key_file(void **state) {
  (void)state;
  mopt_diag d = {0};
  char path[256];
  snprintf(path, sizeof path, "%s/ota-signing.key", dir);
  assert_int_equal(access(path, F_OK), -1);
  assert_int_equal(api_ota_init(&ctx, &d), 0);
  assert_non_null(ctx.ota);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(st.st_size, 64);
  api_response r;
  call(api_h_ota_public_key, API_GET, NULL, NULL, NULL, 0, &r);
  assert_int_equal(r.status, 200);
  char first[256];
  snprintf(first, sizeof first, "%.*s", (int)r.body_len, r.body);
  resp_free(&r);
  /* a second start reuses the key */
  assert_int_equal(api_ota_init(&ctx, &d), 0);
  call(api_h_ota_public_key, API_GET, NULL, NULL, NULL, 0, &r);
  assert_int_equal(strncmp(first, r.body, r.body_len), 0);
  uint8_t pk[32];
  assert_int_equal(mopt_manifest_parse_key((const uint8_t *)r.body, r.body_len, pk, &d), 0);
  resp_free(&r);
  /* readable by others: refused, naming the fix */
  chmod(path, 0644);
  assert_int_equal(api_ota_init(&ctx, &d), MOPT_EINVAL);
  assert_non_null(strstr(d.msg, "chmod 600"));
  chmod(path, 0600);
  /* corrupted (public half does not match the seed): refused */
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "\x01", 1, 40), 1);
  close(fd);
  assert_int_equal(api_ota_init(&ctx, &d), MOPT_EINVAL);
  /* a fresh key again after the bad one is removed; settings come from ctx->limits */
  unlink(path);
  assert_int_equal(api_ota_init(&ctx, &d), 0);
}

static json_t *body_json(const api_response *r) {
  json_error_t je;
  json_t *j = json_loadb(r->body, r->body_len, 0, &je);
  assert_non_null(j);
  return j;
}

static void test_releases_and_manifest(void **state) {
  (void)state;
  mopt_diag d = {0};
  assert_int_equal(api_ota_init(&ctx, &d), 0);
  store_conn *c = store_conn_get(ctx.st);
  put_model(1, 5000);
  put_model(2, 6000);
  put_model(3, 7000);
  char a[72], b[72], x[72], body[128];
  model_id(a, 1);
  model_id(b, 2);
  model_id(x, 3);
  api_response r;
  snprintf(body, sizeof body, "{\"model\":\"%s\"}", a);
  call(api_h_releases_put, API_PUT, "kws", "stable", body, 0, &r);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  snprintf(body, sizeof body, "{\"model\":\"%s\"}", b);
  call(api_h_releases_put, API_PUT, "kws", "stable", body, 0, &r);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "current"), "version")),
                   2);
  json_decref(j);
  resp_free(&r);
  call(api_h_releases_put, API_PUT, "a/b", "stable", body, 0, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  call(api_h_releases_put, API_PUT, "kws", "..", body, 0, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);

  /* publish queued: full(a), full(b), delta(a→b) */
  store_payload pend[8];
  uint32_t n = 0;
  assert_int_equal(store_payload_pending(c, 8, pend, &n), 0);
  assert_int_equal(n, 3);

  /* pending: the first call asks to wait on the full payload's key */
  q_have = a;
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 0, &r);
  store_payload full_b, delta_ab;
  assert_int_equal(store_payload_get(c, "full", NULL, b, &full_b), 0);
  assert_int_equal(store_payload_get(c, "delta", a, b, &delta_ab), 0);
  char key[40];
  snprintf(key, sizeof key, "%s%lld", API_OTA_WAIT_PREFIX, (long long)full_b.seq);
  assert_string_equal(r.wait_job, key);
  assert_true(r.wait_deadline_ms > api_now_ms());
  resp_free(&r);
  /* after the deadline: 503 with Retry-After while the full payload is pending */
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 1, &r);
  assert_int_equal(r.status, 503);
  assert_int_equal(r.wait_job[0], 0);
  resp_free(&r);
  /* full ready, delta pending: waits on the delta's key; after the deadline, full only */
  char dig_full[65], dig_delta[65];
  memset(dig_full, 'f', 64);
  dig_full[64] = 0;
  memset(dig_delta, 'd', 64);
  dig_delta[64] = 0;
  assert_int_equal(store_payload_ready(c, full_b.seq, dig_full, 4000), 0);
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 0, &r);
  snprintf(key, sizeof key, "%s%lld", API_OTA_WAIT_PREFIX, (long long)delta_ab.seq);
  assert_string_equal(r.wait_job, key);
  resp_free(&r);
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 1, &r);
  assert_int_equal(r.status, 200);
  j = body_json(&r);
  json_t *pl = json_object_get(json_object_get(j, "signed"), "payloads");
  assert_int_equal(json_array_size(pl), 1);
  assert_string_equal(json_string_value(json_object_get(json_array_get(pl, 0), "kind")), "full");
  json_decref(j);
  resp_free(&r);
  /* both ready: delta first (smaller), signature verifies, a flipped byte does not */
  assert_int_equal(store_payload_ready(c, delta_ab.seq, dig_delta, 300), 0);
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 0, &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.wait_job[0], 0);
  j = body_json(&r);
  json_t *s = json_object_get(j, "signed");
  pl = json_object_get(s, "payloads");
  assert_int_equal(json_array_size(pl), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(pl, 0), "kind")), "delta");
  assert_string_equal(json_string_value(json_object_get(json_array_get(pl, 0), "from")), a);
  assert_int_equal(json_integer_value(json_object_get(json_array_get(pl, 0), "size")), 300);
  assert_int_equal(json_integer_value(json_object_get(json_array_get(pl, 1), "size")), 4000);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "target"), "size")),
                   6000);
  assert_int_equal(json_integer_value(json_object_get(s, "version")), 2);
  json_decref(j);
  uint8_t pk[32];
  api_response kr;
  call(api_h_ota_public_key, API_GET, NULL, NULL, NULL, 0, &kr);
  assert_int_equal(mopt_manifest_parse_key((const uint8_t *)kr.body, kr.body_len, pk, &d), 0);
  resp_free(&kr);
  size_t off = 0, len = 0;
  assert_int_equal(mopt_manifest_verify((const uint8_t *)r.body, r.body_len, pk, &off, &len, &d),
                   0);
  assert_memory_equal(r.body + off, "{\"channel\":\"stable\"", 19);   /* sorted keys */
  r.body[off + len / 2] ^= 1;
  assert_int_not_equal(mopt_manifest_verify((const uint8_t *)r.body, r.body_len, pk, NULL, NULL,
                                            &d), 0);
  resp_free(&r);
  /* up to date, unknown have, known have that is no release: its delta gets queued */
  q_have = b;
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 0, &r);
  assert_int_equal(r.status, 200);
  j = body_json(&r);
  assert_true(json_is_true(json_object_get(json_object_get(j, "signed"), "up_to_date")));
  assert_int_equal(json_array_size(json_object_get(json_object_get(j, "signed"), "payloads")), 0);
  json_decref(j);
  resp_free(&r);
  char unknown[72];
  model_id(unknown, 999);
  q_have = unknown;
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 0, &r);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  assert_int_equal(store_payload_get(c, "delta", unknown, b, &full_b), MOPT_ENOTFOUND);
  q_have = x;
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 1, &r);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  assert_int_equal(store_payload_get(c, "delta", x, b, &full_b), 0);
  assert_int_equal(full_b.state, STORE_PAYLOAD_PENDING);
  q_have = "sha256:nothex";
  call(api_h_ota_manifest, API_GET, "kws", "stable", NULL, 0, &r);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  q_have = NULL;
  call(api_h_ota_manifest, API_GET, "nope", "stable", NULL, 0, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);

  /* payloads by id: ready ones only; the blob must exist */
  char pid[80];
  snprintf(pid, sizeof pid, "sha256:%s", dig_delta);
  call(api_h_payloads_get, API_GET, pid, NULL, NULL, 0, &r);
  assert_int_equal(r.status, 500);   /* row ready but no blob file in this fake store */
  resp_free(&r);
  snprintf(pid, sizeof pid, "sha256:%064x", 12345u);
  call(api_h_payloads_get, API_GET, pid, NULL, NULL, 0, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_key_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_releases_and_manifest, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
