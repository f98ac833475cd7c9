/* models.c — model registration and the /v1/models handlers (upload, list, get, content,
 * delete).
 *
 * Uploads arrive as a finished store_upload (the server streamed the body to tmp/ while hashing
 * it); this file checks the client's digest, validates the bytes with libmopt, publishes the
 * blob and indexes it. Content is served straight from the blob file (fd + offset + length),
 * never copied into memory, with strong ETags and single byte ranges.
 * Trade-off: validation is libmopt's streaming scan (bounded memory, one sequential read of the
 * file) rather than a full load: a 1 GiB upload does not grow the daemon, at the cost of a
 * second read of the bytes after the upload's own hashing pass.
 * Re-uploads of bytes already indexed skip the parse (same digest, same bytes, already valid).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_int.h"
#include "mopt.h"

#define NAME_MAX_LEN 127

/* Serializes "publish blob + index row" against "delete row + unlink blob" in this process, so a
 * re-upload racing a DELETE of the same digest can never end with a row whose blob was just
 * unlinked. Both sections are a rename/unlink and one SQLite statement, so one lock is cheap. */
static pthread_mutex_t blob_mu = PTHREAD_MUTEX_INITIALIZER;
#define VERSION_MAX_LEN 63

/* ---------------------------------------------------------------- validation ---- */

/* Validates the file with libmopt's streaming scanner (bounded memory whatever the model's
 * size; external data refused: an upload is one file) and fills info. */
static int validate_model_file(const char *path, mopt_model_info *info, mopt_diag *diag) {
  struct stat st;
  if (stat(path, &st) != 0)
    return mopt_diag_set(diag, MOPT_EIO, "body", "cannot stat the uploaded file: %s",
                         strerror(errno));
  if (st.st_size == 0)
    return mopt_diag_set(diag, MOPT_EPARSE, "body",
                         "empty body: the request must carry the ONNX model bytes");
  mopt_load_limits lim = {0};   /* defaults; bundle_dir NULL refuses external tensors */
  int rc = mopt_model_scan_file(path, &lim, info, diag);
  if (rc == 0 && info->node_count == 0 && info->weight_count == 0)
    rc = mopt_diag_set(diag, MOPT_EMODEL, "graph", "the model has no graph nodes");
  return rc;
}

/* Fills the metadata part of a store_model from the core's summary. */
static void model_from_info(store_model *m, const mopt_model_info *info) {
  json_t *ops = json_object();
  for (size_t i = 0; i < info->n_opsets && i < 16; i++)
    json_object_set_new(ops, info->opsets[i].domain, json_integer(info->opsets[i].version));
  char *t = json_dumps(ops, JSON_COMPACT);
  json_decref(ops);
  if (t && strlen(t) < sizeof m->opsets) snprintf(m->opsets, sizeof m->opsets, "%s", t);
  else snprintf(m->opsets, sizeof m->opsets, "{\"\":%lld}", (long long)info->default_opset);
  free(t);
  snprintf(m->format, sizeof m->format, "onnx");
  m->ir_version = info->ir_version;
  m->node_count = info->node_count;
  m->weight_count = info->weight_count;
  m->param_count = info->param_count;
}

static void model_names(store_model *m, const char *name, const char *version,
                        const char *parent, const char *job) {
  snprintf(m->name, sizeof m->name, "%s", name ? name : "");
  snprintf(m->version, sizeof m->version, "%s", version ? version : "");
  snprintf(m->parent, sizeof m->parent, "%s", parent ? parent : "");
  snprintf(m->job, sizeof m->job, "%s", job ? job : "");
}

int api_model_register_file(api_ctx *ctx, const char *path, const char *name,
                            const char *version, const char *parent, const char *job,
                            store_model *out, int *created, mopt_diag *diag) {
  mopt_model_info info;
  memset(&info, 0, sizeof info);
  *created = 0;
  int rc = validate_model_file(path, &info, diag);
  if (rc) {
    unlink(path);
    return rc;
  }
  char hex[65];
  uint64_t size = 0;
  int existed = 0;
  pthread_mutex_lock(&blob_mu);
  rc = store_blob_adopt(ctx->st, path, hex, &size, &existed);
  if (rc) {
    pthread_mutex_unlock(&blob_mu);
    unlink(path);
    return mopt_diag_set(diag, rc, "store", "cannot publish the model blob");
  }
  memset(out, 0, sizeof *out);
  snprintf(out->id, sizeof out->id, "sha256:%s", hex);
  out->size = size;
  out->created = api_now_ms();
  model_names(out, name, version, parent, job);
  model_from_info(out, &info);
  rc = store_model_put(store_conn_get(ctx->st), out, created);
  pthread_mutex_unlock(&blob_mu);
  if (rc) return mopt_diag_set(diag, rc, "store", "cannot index the model");
  return 0;
}

/* ---------------------------------------------------------------- digests ---- */

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

/* Decodes standard or URL-safe base64 (padding optional) of exactly 32 bytes into hex. */
static int b64_sha256_hex(const char *s, size_t n, char hex[65]) {
  unsigned char out[33];
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '=') break;
    int v = b64val((unsigned char)s[i]);
    if (v < 0) return 0;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o >= sizeof out) return 0;
      out[o++] = (unsigned char)(acc >> bits);
    }
  }
  if (o != 32) return 0;
  for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", out[i]);
  return 1;
}

/* Finds the sha-256 value in a Digest / Content-Digest header ("sha-256=<b64>" or
 * "sha-256=:<b64>:", comma-separated with other algorithms). Returns 1 with hex filled, 0 when
 * the header names no sha-256, -1 when the sha-256 value is malformed. */
static int digest_header_hex(const char *h, char hex[65]) {
  const char *p = h;
  while (p && *p) {
    while (*p == ' ' || *p == ',') p++;
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > 8 && strncasecmp(p, "sha-256=", 8) == 0) {
      const char *v = p + 8;
      size_t vl = len - 8;
      while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
      if (vl >= 2 && v[0] == ':' && v[vl - 1] == ':') { v++; vl -= 2; }
      return b64_sha256_hex(v, vl, hex) ? 1 : -1;
    }
    p = end;
  }
  return 0;
}

/* 0 when the client's digest headers (if any) agree with the upload's digest; otherwise fills
 * resp with 400 and returns the error. */
static int check_client_digest(const api_request *req, api_response *resp) {
  char hex[65];
  const char *x = api_header_get(req, "X-Content-SHA256");
  if (x) {
    size_t n = strlen(x);
    while (n && (x[n - 1] == ' ' || x[n - 1] == '\t')) n--;
    int ok = n == 64;
    for (size_t i = 0; ok && i < 64; i++) {
      char c = x[i];
      if (c >= 'A' && c <= 'F') c = (char)(c - 'A' + 'a');
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) ok = 0;
      hex[i] = c;
    }
    hex[64] = 0;
    if (!ok) {
      api_error(resp, MOPT_EBADREQ, "X-Content-SHA256 must be 64 hex characters",
                "X-Content-SHA256", NULL);
      return MOPT_EBADREQ;
    }
    if (strcmp(hex, req->upload_hex) != 0) {
      char det[200];
      snprintf(det, sizeof det, "{\"expected\":\"%s\",\"actual\":\"%s\"}", hex, req->upload_hex);
      api_error(resp, MOPT_EDIGEST, "body SHA-256 does not match X-Content-SHA256",
                "X-Content-SHA256", det);
      return MOPT_EDIGEST;
    }
  }
  const char *names[] = {"Digest", "Content-Digest"};
  for (int k = 0; k < 2; k++) {
    const char *d = api_header_get(req, names[k]);
    if (!d) continue;
    int r = digest_header_hex(d, hex);
    if (r < 0) {
      api_error(resp, MOPT_EBADREQ, "sha-256 digest must be the base64 of 32 bytes", names[k],
                NULL);
      return MOPT_EBADREQ;
    }
    if (r == 1 && strcmp(hex, req->upload_hex) != 0) {
      char det[200], msg[96];
      snprintf(det, sizeof det, "{\"expected\":\"%s\",\"actual\":\"%s\"}", hex, req->upload_hex);
      snprintf(msg, sizeof msg, "body SHA-256 does not match the %s header", names[k]);
      api_error(resp, MOPT_EDIGEST, msg, names[k], det);
      return MOPT_EDIGEST;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- handlers ---- */

static void answer_model(api_response *resp, int status, const store_model *m) {
  char *t = api_model_json(m);
  if (!t) { api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL); return; }
  api_response_json(resp, status, t);
}

static void consume_upload(const api_request *req, api_response *resp) {
  if (req->upload) store_upload_abort(req->upload);
  resp->upload_consumed = 1;
}

int api_h_models_upload(api_ctx *ctx, const api_request *req, api_response *resp) {
  if (!req->upload) {
    api_error(resp, MOPT_EBADREQ, "expected the model bytes as the request body", "body", NULL);
    return MOPT_EBADREQ;
  }
  int rc = check_client_digest(req, resp);
  if (rc) { consume_upload(req, resp); return rc; }

  const char *name = api_query(req, "name");
  const char *version = api_query(req, "version");
  if (!name) name = "unnamed";
  if (!version) version = "1";
  if (!api_name_valid(name, NAME_MAX_LEN)) {
    api_error(resp, MOPT_EBADREQ,
              "name must be 1..127 characters of A-Z a-z 0-9 . _ - /, without \"..\", \"//\" or "
              "a leading or trailing '/'", "name", NULL);
    consume_upload(req, resp);
    return MOPT_EBADREQ;
  }
  if (!api_name_valid(version, VERSION_MAX_LEN)) {
    api_error(resp, MOPT_EBADREQ,
              "version must be 1..63 characters of A-Z a-z 0-9 . _ - /, without \"..\", \"//\" "
              "or a leading or trailing '/'", "version", NULL);
    consume_upload(req, resp);
    return MOPT_EBADREQ;
  }
  if (req->upload_size == 0) {
    api_error(resp, MOPT_EPARSE, "empty body: the request must carry the ONNX model bytes",
              "body", NULL);
    consume_upload(req, resp);
    return MOPT_EPARSE;
  }

  store_conn *c = store_conn_get(ctx->st);
  store_model m;
  memset(&m, 0, sizeof m);
  char id[72];
  snprintf(id, sizeof id, "sha256:%.64s", req->upload_hex);
  if (store_model_get(c, id, &m) == 0) {
    /* Same bytes already indexed (and therefore already validated). */
    consume_upload(req, resp);
    answer_model(resp, 200, &m);
    return 0;
  }

  mopt_model_info info;
  memset(&info, 0, sizeof info);
  mopt_diag d;
  memset(&d, 0, sizeof d);
  rc = validate_model_file(store_upload_path(req->upload), &info, &d);
  if (rc) {
    consume_upload(req, resp);
    /* The body's size was accepted (413 is decided before reading it); a tensor whose dims
     * overflow or exceed the loader's caps makes the model invalid, not the request too large. */
    if (rc == MOPT_ELIMIT) rc = MOPT_EMODEL;
    api_error_diag(resp, rc, &d);
    return rc;
  }
  int existed = 0;
  pthread_mutex_lock(&blob_mu);
  rc = store_upload_publish(req->upload, &existed);
  resp->upload_consumed = 1;
  if (rc) {
    pthread_mutex_unlock(&blob_mu);
    api_error(resp, rc, "cannot store the model", "store", NULL);
    return rc;
  }
  memset(&m, 0, sizeof m);
  memcpy(m.id, id, sizeof m.id - 1);
  m.size = req->upload_size;
  m.created = api_now_ms();
  model_names(&m, name, version, NULL, NULL);
  model_from_info(&m, &info);
  int created = 0;
  rc = store_model_put(c, &m, &created);
  pthread_mutex_unlock(&blob_mu);
  if (rc) {
    api_error(resp, rc, "cannot index the model", "store", NULL);
    return rc;
  }
  if (created) api_response_header(resp, "Location", "/v1/models/%s", m.id);
  answer_model(resp, created ? 201 : 200, &m);
  return 0;
}

int api_h_models_list(api_ctx *ctx, const api_request *req, api_response *resp) {
  uint32_t limit;
  const char *cursor;
  int rc = api_list_params(req, resp, &limit, &cursor);
  if (rc) return rc;
  const char *name = api_query(req, "name");
  if (name && !api_name_valid(name, NAME_MAX_LEN)) {
    api_error(resp, MOPT_EBADREQ, "name filter is not a valid model name", "name", NULL);
    return MOPT_EBADREQ;
  }
  store_model *items = calloc(limit, sizeof *items);
  if (!items) { api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL); return MOPT_ENOMEM; }
  uint32_t n = 0;
  char next[64] = "";
  rc = store_model_list(store_conn_get(ctx->st), name, cursor, limit, items, &n, next);
  if (rc) {
    free(items);
    api_error(resp, rc, rc == MOPT_EINVAL || rc == MOPT_EBADREQ
                            ? "cursor is not one this server returned" : NULL,
              rc == MOPT_EINVAL || rc == MOPT_EBADREQ ? "cursor" : NULL, NULL);
    if (rc == MOPT_EINVAL) resp->status = 400;
    return rc;
  }
  json_t *arr = json_array();
  for (uint32_t i = 0; i < n; i++) {
    char *t = api_model_json(&items[i]);
    json_error_t je;
    json_t *v = t ? json_loads(t, 0, &je) : NULL;
    free(t);
    if (v) json_array_append_new(arr, v);
  }
  free(items);
  json_t *o = json_pack("{s:o,s:o}", "items", arr, "next_cursor",
                        next[0] ? json_string(next) : json_null());
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!text) { api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL); return MOPT_ENOMEM; }
  api_response_json(resp, 200, text);
  return 0;
}

/* Validates params[0] as a model id and loads the row; fills resp on error. */
static int load_model(api_ctx *ctx, const api_request *req, api_response *resp, store_model *m) {
  const char *id = req->n_params ? req->params[0] : NULL;
  if (!api_model_id_valid(id)) {
    api_error(resp, MOPT_EBADREQ, "model id must be \"sha256:\" followed by 64 lowercase hex "
              "characters", "id", NULL);
    return MOPT_EBADREQ;
  }
  int rc = store_model_get(store_conn_get(ctx->st), id, m);
  return rc ? api_lookup_failed(resp, rc, "model", id, "id") : 0;
}

int api_h_models_get(api_ctx *ctx, const api_request *req, api_response *resp) {
  store_model m;
  int rc = load_model(ctx, req, resp, &m);
  if (rc) return rc;
  answer_model(resp, 200, &m);
  return 0;
}

int api_h_models_content(api_ctx *ctx, const api_request *req, api_response *resp) {
  store_model m;
  int rc = load_model(ctx, req, resp, &m);
  if (rc) return rc;
  return api_serve_blob(ctx, req, resp, m.id + 7, "the model's content");
}

int api_serve_blob(api_ctx *ctx, const api_request *req, api_response *resp, const char *hex,
                   const char *what) {
  char path[4096];
  int rc = store_blob_path(ctx->st, hex, path, sizeof path);
  int fd = rc == 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    if (fd >= 0) close(fd);
    char msg[160];
    snprintf(msg, sizeof msg, "%s is missing from the store", what);
    api_error(resp, MOPT_EIO, msg, "store", NULL);
    return MOPT_EIO;
  }
  uint64_t size = (uint64_t)st.st_size;
  char etag[80];
  snprintf(etag, sizeof etag, "\"%.64s\"", hex);
  api_response_header(resp, "ETag", "%s", etag);
  api_response_header(resp, "Accept-Ranges", "bytes");
  api_response_header(resp, "Cache-Control", "public, max-age=31536000, immutable");

  const char *inm = api_header_get(req, "If-None-Match");
  if (inm && api_etag_match(inm, etag)) {
    close(fd);
    resp->status = 304;
    resp->content_type = "application/octet-stream";
    return 0;
  }
  uint64_t start = 0, len = size;
  int partial = 0;
  const char *range = api_header_get(req, "Range");
  const char *if_range = api_header_get(req, "If-Range");
  /* If-Range: the range applies only while the entity tag still matches (strong comparison);
   * a date or another tag means "send everything". */
  if (range && if_range) {
    const char *ir = if_range;
    while (*ir == ' ') ir++;
    if (strncmp(ir, etag, strlen(etag)) != 0 || ir[strlen(etag)] != 0) range = NULL;
  }
  if (range) {
    int r = api_range_parse(range, size, &start, &len);
    if (r == MOPT_ERANGE) {
      close(fd);
      char msg[96];
      snprintf(msg, sizeof msg, "range is outside the %llu bytes of the content",
               (unsigned long long)size);
      api_error(resp, MOPT_ERANGE, msg, "Range", NULL);
      api_response_header(resp, "Content-Range", "bytes */%llu", (unsigned long long)size);
      return MOPT_ERANGE;
    }
    partial = r == 1;
    if (!partial) { start = 0; len = size; }
  }
  resp->status = partial ? 206 : 200;
  resp->content_type = "application/octet-stream";
  if (partial)
    api_response_header(resp, "Content-Range", "bytes %llu-%llu/%llu",
                        (unsigned long long)start, (unsigned long long)(start + len - 1),
                        (unsigned long long)size);
  resp->file_fd = fd;
  resp->file_offset = start;
  resp->file_length = len;
  return 0;
}

int api_h_models_delete(api_ctx *ctx, const api_request *req, api_response *resp) {
  store_model m;
  int rc = load_model(ctx, req, resp, &m);
  if (rc) return rc;
  pthread_mutex_lock(&blob_mu);
  rc = store_model_delete(store_conn_get(ctx->st), m.id);
  /* One index row per digest: once it is gone the blob has no other user. */
  if (rc == 0) store_blob_remove(ctx->st, m.id + 7);
  pthread_mutex_unlock(&blob_mu);
  if (rc == MOPT_ECONFLICT) {
    api_error(resp, rc, "the model is referenced by a job or a release; it cannot be deleted",
              "id", NULL);
    return rc;
  }
  if (rc) { api_error(resp, rc, NULL, "id", NULL); return rc; }
  resp->status = 204;
  resp->content_type = NULL;
  return 0;
}
