/* ota.c — OTA handlers: releases (publish, history), signed manifests, the public key, and
 * payload downloads; plus the manifest signing key's life cycle (api_ota_init).
 *
 * Handlers never compute payloads: publishing and manifest requests only make sure a payloads
 * row exists (store_payload_request — the unique (kind, base, target) index makes concurrent
 * requests share one row), and the server's payload task queue (server/payload_tasks.c) runs
 * `mopt pack` / `mopt delta` for pending rows. A manifest request whose payloads are still
 * pending long-polls (suspended connection, no thread held) on that payload's key up to
 * ota_wait_s (config table; MOPTD_OTA_WAIT_S), then answers with what is ready: a delta still being computed is simply
 * left out (the full payload is always listed; if even the full one is not ready the answer
 * is 503 with Retry-After). Trade-off: the device may get a larger payload the first time a
 * new base shows up, in exchange for manifests that never block on a slow delta.
 *
 * Signing: the "signed" object is serialized once by jansson (sorted keys, compact) and those
 * exact bytes are embedded in the answer and signed (format in core/payload.h), so the device
 * verifies without re-serializing. The key id is the SHA-256 hex of the public key.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_int.h"
#include "payload.h"

#define OTA_KEY_FILE "ota-signing.key"
#define OTA_DELTA_PREVIOUS 3          /* deltas queued at publish: from the last N releases */
#define OTA_HISTORY_MAX 100
#define OTA_NAME_MAX 127
#define OTA_CHANNEL_MAX 63

struct api_ota {
  unsigned char sk[crypto_sign_SECRETKEYBYTES];
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
  char keyid[65];
  char pk_b64[64];
  uint32_t ttl_s;
  uint32_t wait_s;
};

/* One process, one key: static storage (nothing to free at exit). */
static api_ota g_ota;

/* ------------------------------------------------------------------ key file ---- */

static int read_exact(int fd, unsigned char *p, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t r = read(fd, p + off, n - off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    off += (size_t)r;
  }
  unsigned char extra;
  return read(fd, &extra, 1) == 0 ? 0 : -1;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Creates a fresh key file atomically: temp file (O_EXCL, 0600), fsync, link() into place
 * (fails with EEXIST when another process won the race: its key is then used), fsync dir. */
static int key_create(const char *dir, const char *path, mopt_diag *diag) {
  unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
  crypto_sign_keypair(pk, sk);
  char tmp[4200];
  unsigned char rnd[8];
  char rhex[17];
  randombytes_buf(rnd, sizeof rnd);
  sodium_bin2hex(rhex, sizeof rhex, rnd, sizeof rnd);
  snprintf(tmp, sizeof tmp, "%s/.%s.%s", dir, OTA_KEY_FILE, rhex);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return mopt_diag_set(diag, MOPT_EIO, tmp, "cannot create the OTA signing key: %s",
                         strerror(errno));
  int ok = fchmod(fd, 0600) == 0 && write_all(fd, sk, sizeof sk) == 0 && fsync(fd) == 0;
  sodium_memzero(sk, sizeof sk);
  if (close(fd) != 0) ok = 0;
  if (!ok) {
    unlink(tmp);
    return mopt_diag_set(diag, MOPT_EIO, tmp, "cannot write the OTA signing key: %s",
                         strerror(errno));
  }
  int lr = link(tmp, path);
  int lerr = errno;
  unlink(tmp);
  if (lr != 0 && lerr != EEXIST)
    return mopt_diag_set(diag, MOPT_EIO, path, "cannot install the OTA signing key: %s",
                         strerror(lerr));
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return 0;
}

static int key_load(const char *path, api_ota *o, mopt_diag *diag) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return mopt_diag_set(diag, MOPT_EIO, path, "cannot open the OTA signing key: %s",
                         strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return mopt_diag_set(diag, MOPT_EIO, path, "the OTA signing key is not a regular file");
  }
  if (st.st_mode & 077) {
    close(fd);
    return mopt_diag_set(diag, MOPT_EINVAL, path,
                         "the OTA signing key is accessible by group or others (mode %03o); "
                         "chmod 600 it", (unsigned)(st.st_mode & 0777));
  }
  int r = read_exact(fd, o->sk, sizeof o->sk);
  close(fd);
  if (r != 0)
    return mopt_diag_set(diag, MOPT_EINVAL, path,
                         "the OTA signing key must be exactly %u bytes (libsodium ed25519 "
                         "secret key)", (unsigned)sizeof o->sk);
  /* The secret key holds the seed and the public key: check they agree. */
  unsigned char seed[crypto_sign_SEEDBYTES], pk2[crypto_sign_PUBLICKEYBYTES],
      sk2[crypto_sign_SECRETKEYBYTES];
  crypto_sign_ed25519_sk_to_seed(seed, o->sk);
  crypto_sign_seed_keypair(pk2, sk2, seed);
  sodium_memzero(seed, sizeof seed);
  sodium_memzero(sk2, sizeof sk2);
  crypto_sign_ed25519_sk_to_pk(o->pk, o->sk);
  if (memcmp(pk2, o->pk, sizeof pk2) != 0)
    return mopt_diag_set(diag, MOPT_EINVAL, path, "the OTA signing key is corrupted (its public "
                         "half does not match its seed)");
  return 0;
}

int api_ota_init(api_ctx *ctx, mopt_diag *diag) {
  if (!ctx || !ctx->st) return mopt_diag_set(diag, MOPT_EINVAL, "ota", "no store");
  if (sodium_init() < 0) return mopt_diag_set(diag, MOPT_EINTERNAL, "libsodium", "sodium_init");
  api_ota *o = &g_ota;
  memset(o, 0, sizeof *o);
  /* Both come from the server's config table (flags, MOPTD_OTA_* env, config file). */
  o->ttl_s = ctx->limits.ota_manifest_ttl_s ? ctx->limits.ota_manifest_ttl_s : 86400;
  o->wait_s = ctx->limits.ota_wait_s;
  int rc;
  const char *dir = store_data_dir(ctx->st);
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, OTA_KEY_FILE);
  if (access(path, F_OK) != 0) {
    rc = key_create(dir, path, diag);
    if (rc) return rc;
  }
  rc = key_load(path, o, diag);
  if (rc) return rc;
  mopt_manifest_keyid(o->pk, o->keyid);
  sodium_bin2base64(o->pk_b64, sizeof o->pk_b64, o->pk, sizeof o->pk,
                    sodium_base64_VARIANT_ORIGINAL);
  ctx->ota = o;
  return 0;
}

/* ------------------------------------------------------------------- helpers ---- */

/* Release name / channel: 1..maxlen of [A-Za-z0-9._-], not "." or "..", no "..". One path
 * segment, so the route /v1/releases/{name}/{channel} stays unambiguous. */
static int segment_valid(const char *s, size_t maxlen) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > maxlen) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return strstr(s, "..") == NULL && strcmp(s, ".") != 0;
}

static int name_channel(const api_request *req, api_response *resp, const char **name,
                        const char **channel) {
  *name = req->n_params > 0 ? req->params[0] : NULL;
  *channel = req->n_params > 1 ? req->params[1] : NULL;
  if (!segment_valid(*name, OTA_NAME_MAX)) {
    api_error(resp, MOPT_EBADREQ, "release name must be 1..127 characters of A-Z a-z 0-9 . _ - "
              "(one path segment, no \"..\")", "name", NULL);
    return MOPT_EBADREQ;
  }
  if (!segment_valid(*channel, OTA_CHANNEL_MAX)) {
    api_error(resp, MOPT_EBADREQ, "channel must be 1..63 characters of A-Z a-z 0-9 . _ - "
              "(no \"..\")", "channel", NULL);
    return MOPT_EBADREQ;
  }
  return 0;
}

static int need_ota(api_ctx *ctx, api_response *resp) {
  if (ctx->ota) return 0;
  api_error(resp, MOPT_EUNAVAILABLE, "OTA is not initialized on this server (no signing key)",
            "ota", NULL);
  api_response_header(resp, "Retry-After", "5");
  return MOPT_EUNAVAILABLE;
}

static json_t *release_json(const store_release *r) {
  char t[40];
  api_time_format(r->created, t, sizeof t);
  return json_pack("{s:I,s:s,s:s}", "version", (json_int_t)r->version, "model", r->model,
                   "created", t);
}

static int answer_json(api_response *resp, int status, json_t *o) {
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!text) {
    api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL);
    return MOPT_ENOMEM;
  }
  api_response_json(resp, status, text);
  return 0;
}

/* {"name","channel","current":{…},"history":[…newest first…]} */
static int answer_release(api_ctx *ctx, api_response *resp, int status, const char *name,
                          const char *channel) {
  store_release *h = calloc(OTA_HISTORY_MAX, sizeof *h);
  if (!h) { api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL); return MOPT_ENOMEM; }
  uint32_t n = 0;
  int rc = store_release_history(store_conn_get(ctx->st), name, channel, OTA_HISTORY_MAX, h, &n);
  if (rc || n == 0) {
    free(h);
    if (!rc) {
      rc = MOPT_ENOTFOUND;
      char msg[256];
      snprintf(msg, sizeof msg, "nothing was ever published as %s on channel %s", name, channel);
      api_error(resp, rc, msg, "name", NULL);
    } else {
      api_error(resp, rc, NULL, "store", NULL);
    }
    return rc;
  }
  json_t *hist = json_array();
  for (uint32_t i = 0; i < n; i++) json_array_append_new(hist, release_json(&h[i]));
  json_t *o = json_pack("{s:s,s:s,s:o,s:o}", "name", name, "channel", channel, "current",
                        release_json(&h[0]), "history", hist);
  free(h);
  api_response_header(resp, "Cache-Control", "no-store");
  return answer_json(resp, status, o);
}

/* Queues the payloads a new release needs: the full one of the target, and deltas from the
 * models of the previous OTA_DELTA_PREVIOUS distinct releases. Best effort: a failure here
 * only means the payload is computed on first request. */
static int queue_release_payloads(store_conn *c, const store_release *cur) {
  store_payload p;
  int queued = 0, created = 0;
  if (store_payload_request(c, "full", NULL, cur->model, &p, &created) == 0 && created) queued++;
  store_release h[16];
  uint32_t n = 0;
  if (store_release_history(c, cur->name, cur->channel, 16, h, &n) != 0) return queued;
  char seen[OTA_DELTA_PREVIOUS][72];
  int nseen = 0;
  for (uint32_t i = 0; i < n && nseen < OTA_DELTA_PREVIOUS; i++) {
    if (strcmp(h[i].model, cur->model) == 0) continue;
    int dup = 0;
    for (int k = 0; k < nseen; k++) dup |= strcmp(seen[k], h[i].model) == 0;
    if (dup) continue;
    memcpy(seen[nseen++], h[i].model, 72);
    if (store_payload_request(c, "delta", h[i].model, cur->model, &p, &created) == 0 && created)
      queued++;
  }
  return queued;
}

/* ------------------------------------------------------------------ releases ---- */

int api_h_releases_put(api_ctx *ctx, const api_request *req, api_response *resp) {
  const char *name, *channel;
  int rc = name_channel(req, resp, &name, &channel);
  if (rc) return rc;
  json_error_t je;
  json_t *body = req->body_len ? json_loadb(req->body, req->body_len, 0, &je) : NULL;
  if (!body || !json_is_object(body)) {
    json_decref(body);
    api_error(resp, MOPT_EJSON, "body must be a JSON object {\"model\": \"sha256:…\"}", "body",
              NULL);
    return MOPT_EJSON;
  }
  const char *model = json_string_value(json_object_get(body, "model"));
  const char *key;
  json_t *v;
  json_object_foreach(body, key, v) {
    if (strcmp(key, "model") != 0) {
      char where[160];
      snprintf(where, sizeof where, "/%.120s", key);
      json_decref(body);
      api_error(resp, MOPT_EBADREQ, "unknown field (only \"model\" is accepted)", where, NULL);
      return MOPT_EBADREQ;
    }
  }
  if (!api_model_id_valid(model)) {
    json_decref(body);
    api_error(resp, MOPT_EBADREQ, "model must be a model id: \"sha256:\" followed by 64 "
              "lowercase hex characters", "/model", NULL);
    return MOPT_EBADREQ;
  }
  char mid[72];
  snprintf(mid, sizeof mid, "%s", model);
  json_decref(body);
  store_conn *c = store_conn_get(ctx->st);
  store_release r;
  rc = store_release_publish(c, name, channel, mid, &r);
  if (rc == MOPT_ENOTFOUND) return api_lookup_failed(resp, rc, "model", mid, "/model");
  if (rc) { api_error(resp, rc, "cannot publish the release", "store", NULL); return rc; }
  queue_release_payloads(c, &r);
  if (ctx->hooks.jobs_submitted) ctx->hooks.jobs_submitted(ctx->hooks.hctx);
  return answer_release(ctx, resp, 200, name, channel);
}

int api_h_releases_get(api_ctx *ctx, const api_request *req, api_response *resp) {
  const char *name, *channel;
  int rc = name_channel(req, resp, &name, &channel);
  if (rc) return rc;
  return answer_release(ctx, resp, 200, name, channel);
}

int api_h_releases_list(api_ctx *ctx, const api_request *req, api_response *resp) {
  uint32_t limit;
  const char *cursor;
  int rc = api_list_params(req, resp, &limit, &cursor);
  if (rc) return rc;
  store_release *items = calloc(limit, sizeof *items);
  if (!items) { api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL); return MOPT_ENOMEM; }
  uint32_t n = 0;
  char next[64] = "";
  rc = store_release_list(store_conn_get(ctx->st), cursor, limit, items, &n, next);
  if (rc) {
    free(items);
    if (rc == MOPT_EINVAL) {
      api_error(resp, MOPT_EBADREQ, "cursor is not one this server returned", "cursor", NULL);
      return MOPT_EBADREQ;
    }
    api_error(resp, rc, NULL, "store", NULL);
    return rc;
  }
  json_t *arr = json_array();
  for (uint32_t i = 0; i < n; i++) {
    json_t *cur = release_json(&items[i]);
    json_array_append_new(arr, json_pack("{s:s,s:s,s:o}", "name", items[i].name, "channel",
                                         items[i].channel, "current", cur));
  }
  free(items);
  json_t *o = json_pack("{s:o,s:o}", "items", arr, "next_cursor",
                        next[0] ? json_string(next) : json_null());
  api_response_header(resp, "Cache-Control", "no-store");
  return answer_json(resp, 200, o);
}

/* ------------------------------------------------------------------ manifest ---- */

static json_t *payload_entry(const store_payload *p) {
  char id[80], url[120];
  snprintf(id, sizeof id, "sha256:%s", p->digest);
  snprintf(url, sizeof url, "/v1/payloads/%s", id);
  json_t *o = json_pack("{s:s,s:s,s:I,s:s}", "kind", p->kind, "id", id, "size",
                        (json_int_t)p->size, "url", url);
  if (o && p->base[0]) json_object_set_new(o, "from", json_string(p->base));
  return o;
}

int api_h_ota_manifest(api_ctx *ctx, const api_request *req, api_response *resp) {
  int rc = need_ota(ctx, resp);
  if (rc) return rc;
  const char *name, *channel;
  rc = name_channel(req, resp, &name, &channel);
  if (rc) return rc;
  const char *have = api_query(req, "have");
  if (have && !*have) have = NULL;
  if (have && !api_model_id_valid(have)) {
    api_error(resp, MOPT_EBADREQ, "have must be a model id: \"sha256:\" followed by 64 "
              "lowercase hex characters", "have", NULL);
    return MOPT_EBADREQ;
  }
  store_conn *c = store_conn_get(ctx->st);
  store_release cur;
  rc = store_release_current(c, name, channel, &cur);
  if (rc == MOPT_ENOTFOUND) {
    char msg[256];
    snprintf(msg, sizeof msg, "nothing is published as %s on channel %s", name, channel);
    api_error(resp, rc, msg, "name", NULL);
    return rc;
  }
  if (rc) { api_error(resp, rc, NULL, "store", NULL); return rc; }
  store_model target;
  rc = store_model_get(c, cur.model, &target);
  if (rc) { api_error(resp, rc, "the released model is missing", "store", NULL); return rc; }

  int up_to_date = have && strcmp(have, cur.model) == 0;
  store_payload full, delta;
  int have_delta = 0, pending = 0;
  memset(&full, 0, sizeof full);
  memset(&delta, 0, sizeof delta);
  if (!up_to_date) {
    rc = store_payload_request(c, "full", NULL, cur.model, &full, NULL);
    if (rc) { api_error(resp, rc, "cannot queue the full payload", "store", NULL); return rc; }
    pending |= full.state == STORE_PAYLOAD_PENDING;
    store_model hm;
    /* A delta only from a model this server knows; an unknown `have` gets the full payload. */
    if (have && store_model_get(c, have, &hm) == 0 &&
        store_payload_request(c, "delta", have, cur.model, &delta, NULL) == 0) {
      have_delta = 1;
      pending |= delta.state == STORE_PAYLOAD_PENDING;
    }
    if (pending && ctx->hooks.jobs_submitted) ctx->hooks.jobs_submitted(ctx->hooks.hctx);
    int64_t now = api_now_ms();
    if (pending && ctx->ota->wait_s > 0 &&
        (req->waited_deadline_ms == 0 || now < req->waited_deadline_ms)) {
      /* Long-poll until that payload finishes (the task queue notifies its key) or the
       * deadline; then this handler runs again and answers with what is ready. The full one
       * first, then the delta: at most two waits per request. */
      int64_t seq = full.state == STORE_PAYLOAD_PENDING ? full.seq : delta.seq;
      snprintf(resp->wait_job, sizeof resp->wait_job, "%s%lld", API_OTA_WAIT_PREFIX,
               (long long)seq);
      resp->wait_rev = 0;
      resp->wait_deadline_ms = req->waited_deadline_ms ? req->waited_deadline_ms
                                                       : now + (int64_t)ctx->ota->wait_s * 1000;
      return 0;
    }
    if (full.state != STORE_PAYLOAD_READY) {
      int failed = full.state == STORE_PAYLOAD_FAILED;
      char msg[512];
      snprintf(msg, sizeof msg, failed ? "the full payload of %s could not be computed: %s"
                                       : "the full payload of %s is still being computed%s",
               cur.model, failed ? full.error : "; retry shortly");
      api_error(resp, failed ? MOPT_EINTERNAL : MOPT_EUNAVAILABLE, msg, "payloads", NULL);
      if (!failed) api_response_header(resp, "Retry-After", "1");
      return failed ? MOPT_EINTERNAL : MOPT_EUNAVAILABLE;
    }
  }

  json_t *pl = json_array();
  if (!up_to_date) {
    int with_delta = have_delta && delta.state == STORE_PAYLOAD_READY;
    if (with_delta && delta.size <= full.size) json_array_append_new(pl, payload_entry(&delta));
    json_array_append_new(pl, payload_entry(&full));
    if (with_delta && delta.size > full.size) json_array_append_new(pl, payload_entry(&delta));
  }
  char expires[40], issued[40];
  int64_t now = api_now_ms();
  api_time_format(now, issued, sizeof issued);
  api_time_format(now + (int64_t)ctx->ota->ttl_s * 1000, expires, sizeof expires);
  json_t *s = json_pack("{s:s,s:s,s:I,s:s,s:s,s:{s:s,s:I},s:o,s:b,s:o}", "name", name,
                        "channel", channel, "version", (json_int_t)cur.version, "issued", issued,
                        "expires", expires, "target", "id", cur.model, "size",
                        (json_int_t)target.size, "have", have ? json_string(have) : json_null(),
                        "up_to_date", up_to_date, "payloads", pl);
  char *signed_text = s ? json_dumps(s, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  json_decref(s);
  if (!signed_text) { api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL); return MOPT_ENOMEM; }
  char sig[89];
  rc = mopt_manifest_sign((const uint8_t *)signed_text, strlen(signed_text), ctx->ota->sk, sig);
  if (rc) {
    free(signed_text);
    api_error(resp, rc, "cannot sign the manifest", "ota", NULL);
    return rc;
  }
  size_t n = strlen(signed_text) + 256;
  char *text = malloc(n);
  if (!text) {
    free(signed_text);
    api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL);
    return MOPT_ENOMEM;
  }
  snprintf(text, n, "{\"signed\":%s,\"signatures\":[{\"keyid\":\"%s\",\"sig\":\"%s\"}]}",
           signed_text, ctx->ota->keyid, sig);
  free(signed_text);
  api_response_header(resp, "Cache-Control", "no-store");
  api_response_json(resp, 200, text);
  return 0;
}

int api_h_ota_public_key(api_ctx *ctx, const api_request *req, api_response *resp) {
  (void)req;
  int rc = need_ota(ctx, resp);
  if (rc) return rc;
  json_t *o = json_pack("{s:s,s:s,s:s}", "algorithm", "ed25519", "keyid", ctx->ota->keyid,
                        "public_key", ctx->ota->pk_b64);
  api_response_header(resp, "Cache-Control", "public, max-age=300");
  return answer_json(resp, 200, o);
}

/* ------------------------------------------------------------------ payloads ---- */

int api_h_payloads_get(api_ctx *ctx, const api_request *req, api_response *resp) {
  const char *id = req->n_params ? req->params[0] : NULL;
  if (!api_model_id_valid(id)) {
    api_error(resp, MOPT_EBADREQ, "payload id must be \"sha256:\" followed by 64 lowercase hex "
              "characters", "id", NULL);
    return MOPT_EBADREQ;
  }
  store_payload p;
  int rc = store_payload_by_digest(store_conn_get(ctx->st), id + 7, &p);
  if (rc == MOPT_ENOTFOUND) {
    char msg[128];
    snprintf(msg, sizeof msg, "no payload %s", id);
    api_error(resp, rc, msg, "id", NULL);
    return rc;
  }
  if (rc) { api_error(resp, rc, NULL, "store", NULL); return rc; }
  return api_serve_blob(ctx, req, resp, p.digest, "the payload");
}
