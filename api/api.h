/* api.h — moptd's HTTP-agnostic request handlers.
 *
 * The server's HTTP adapter (server/http.c, libmicrohttpd) does, per request:
 *   1. api_route_find()     → route + path params, or 404 / 405 (with the Allow list);
 *   2. api_authorize()      → 401 / 403 before any body byte is read;
 *   3. Content-Length vs route->max_body → 413 before reading; body streamed to a store_upload
 *      (API_BODY_BLOB) or buffered (API_BODY_JSON, at most max_body);
 *   4. route->handler()     → fills an api_response (status, headers, JSON body, or a file range);
 *   5. when the response asks to wait (long-poll), the adapter suspends the connection and calls
 *      the handler again when the job's rev changes (srv notifies) or the deadline passes.
 * Handlers never compute: they validate, touch SQLite and the blob store, and answer. No
 * libmicrohttpd type appears here. Every error uses one JSON shape (api_error()).
 */
#ifndef API_H
#define API_H

#include <stddef.h>
#include <stdint.h>

#include "mopt_error.h"
#include "store.h"

typedef enum { API_GET = 0, API_HEAD = 1, API_POST = 2, API_PUT = 3, API_DELETE = 4,
               API_PATCH = 5, API_OPTIONS = 6, API_METHOD_OTHER = 7 } api_method;
api_method api_method_parse(const char *s);
const char *api_method_name(api_method m);

/* Scopes are a bitmask; a route names the one scope it needs (0 = public). admin implies all. */
enum { API_SCOPE_READ = 1u, API_SCOPE_WRITE = 2u, API_SCOPE_ADMIN = 4u, API_SCOPE_OTA = 8u };

typedef enum { API_BODY_NONE = 0, API_BODY_JSON = 1, API_BODY_BLOB = 2 } api_body_kind;

#define API_MAX_PARAMS 4
#define API_MAX_HEADERS 12

typedef struct api_request {
  api_method method;
  const char *path;                        /* as received, without the query */
  const char *params[API_MAX_PARAMS];      /* path parameters ({id}, …), NUL-terminated copies */
  size_t n_params;
  /* Lookups supplied by the adapter; return NULL when absent. */
  const char *(*query)(void *actx, const char *key);
  const char *(*header)(void *actx, const char *name);   /* case-insensitive */
  void *actx;
  const char *body;                        /* API_BODY_JSON: bytes (not NUL-terminated) */
  size_t body_len;
  store_upload *upload;                    /* API_BODY_BLOB: finished upload; the handler
                                              publishes or aborts it and sets it to NULL via
                                              api_response.upload_consumed */
  char upload_hex[65];
  uint64_t upload_size;
  uint32_t scopes;                         /* scopes of the caller's token */
  const char *request_id;
  /* Long-poll re-invocation: 0 on the first call. When the adapter calls the handler again
   * after a wait (the job changed or the deadline passed) it sets this to the
   * wait_deadline_ms the handler asked for, so the handler answers instead of waiting again. */
  int64_t waited_deadline_ms;
} api_request;

typedef struct api_header { char name[48]; char value[256]; } api_header;

typedef struct api_response {
  int status;
  const char *content_type;                /* static string; default application/json */
  char *body;                              /* malloc'd, adapter frees */
  size_t body_len;
  api_header headers[API_MAX_HEADERS];
  size_t n_headers;
  /* Serve from a file instead of body: fd owned by the response (adapter closes). */
  int file_fd;                             /* -1 when unused */
  uint64_t file_offset, file_length;
  /* Long-poll: when wait_job[0] != 0 the adapter suspends until the job's rev != wait_rev or
   * wait_deadline_ms (unix ms) passes, then calls the handler again with the same request. */
  char wait_job[40];
  uint64_t wait_rev;
  int64_t wait_deadline_ms;
  int upload_consumed;                     /* handler published/aborted req->upload */
  char error_code[48];                     /* for logs/metrics when status >= 400 */
} api_response;

void api_response_init(api_response *r);
/* Adds a header (copied). Silently drops past API_MAX_HEADERS (a programmer error; asserts). */
void api_response_header(api_response *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sets body to JSON text (takes ownership of text, malloc'd) and status. */
void api_response_json(api_response *r, int status, char *text);
/* One error shape: {"error":{"code","message","detail":{"where":…,…}}}; status from the error
 * table. detail_json is an optional JSON object text merged into detail (may be NULL). */
void api_error(api_response *r, int err, const char *message, const char *where,
               const char *detail_json);
void api_error_diag(api_response *r, int err, const mopt_diag *d);

/* Server-supplied hooks; all may be called from any handler thread. */
typedef struct api_hooks {
  void (*jobs_submitted)(void *hctx);                  /* wake the scheduler */
  void (*job_cancel)(void *hctx, const char *job_id);  /* kill a running worker */
  void (*job_changed)(void *hctx, const char *job_id); /* a job row changed: wake long-polls */
  /* Appends Prometheus text for server-owned metrics (requests, latency, workers) to a
   * malloc'd buffer; returns 0 or an error. */
  int (*metrics)(void *hctx, char **text, size_t *len);
  int (*ready)(void *hctx);                            /* 1 when ready to serve */
  void *hctx;
} api_hooks;

typedef struct api_limits {
  uint64_t max_model_bytes;      /* upload limit (413 over it) */
  uint64_t max_json_bytes;       /* JSON body limit */
  uint32_t max_queued_jobs;      /* 429 past it */
  uint32_t max_wait_s;           /* cap for ?wait= */
  uint32_t retry_after_s;        /* Retry-After on 429 */
  uint32_t ota_manifest_ttl_s;   /* manifest expiry = now + this; 0 = 86400 */
  uint32_t ota_wait_s;           /* how long a manifest waits for a pending payload */
} api_limits;

typedef struct api_auth api_auth;
typedef struct api_ota api_ota;   /* OTA signing key and settings (api/ota.c) */

typedef struct api_ctx {
  store *st;
  api_limits limits;
  api_hooks hooks;
  api_auth *auth;                /* NULL = no tokens file: every caller has every scope
                                    (the server only allows that on loopback) */
  api_ota *ota;                  /* set by api_ota_init; NULL = OTA routes answer 503 */
} api_ctx;

typedef int (*api_handler_fn)(api_ctx *ctx, const api_request *req, api_response *resp);

typedef struct api_route {
  api_method method;
  const char *pattern;           /* "/v1/models/{id}/content" — as in openapi.yaml */
  api_handler_fn handler;
  uint32_t scope;                /* API_SCOPE_* needed, 0 = public */
  api_body_kind body;
  uint64_t max_body;             /* 0 = from api_limits (model or JSON limit) */
  const char *name;              /* metrics label, e.g. "jobs_get" */
} api_route;

/* The route table, terminated by a {0} entry (pattern == NULL). */
extern const api_route api_routes[];
extern const size_t api_routes_count;

/* Finds the route for method+path. Fills params (pointing into param_buf of size bufn).
 * Returns 0, MOPT_ENOTFOUND (no pattern matches), or MOPT_EMETHOD with allow filled
 * ("GET, HEAD, DELETE"). HEAD matches GET routes. Path segments containing "..", NUL or
 * percent-encoded slashes never match a parameter. */
int api_route_find(api_method method, const char *path, const api_route **route,
                   const char **params, size_t *n_params, char *param_buf, size_t bufn,
                   char *allow, size_t allown);

/* Time as moptd writes it everywhere (JSON bodies, logs): RFC 3339 UTC with milliseconds,
 * "2026-11-27T23:10:00.123Z", into buf (>= 32 bytes). Thread-safe. */
void api_time_format(int64_t unix_ms, char *buf, size_t n);
/* Wall clock in unix milliseconds. */
int64_t api_now_ms(void);

/* Validates the ONNX file at path with libmopt (limits from ctx), publishes it as a blob
 * (path must be under the store's tmp/, it is renamed or removed) and indexes it as a model
 * with the given name/version/parent/job (any may be NULL). Used by uploads (via the upload's
 * temp file) and by the scheduler for job outputs. *created = 1 when the row is new.
 * MOPT_EPARSE / MOPT_EMODEL / MOPT_ELIMIT with diag when the file is not a valid model; then
 * nothing is kept and the temp file is removed. */
int api_model_register_file(api_ctx *ctx, const char *path, const char *name,
                            const char *version, const char *parent, const char *job,
                            store_model *out, int *created, mopt_diag *diag);

/* OTA (api/ota.c). Loads the manifest signing key pair from <data dir>/ota-signing.key, creating
 * it on first start (ed25519 via libsodium; written to a temp file with mode 0600, fsync'd,
 * then link()ed into place so concurrent first starts agree on one key; fsync of the dir).
 * Refuses a key file readable by group or others, or of the wrong size. Takes the manifest
 * lifetime and the payload wait from ctx->limits (the server's config table:
 * ota_manifest_ttl_s, ota_wait_s). Sets ctx->ota. Call once at start-up, before serving.
 * Returns 0, MOPT_EIO / MOPT_EINVAL with diag. */
int api_ota_init(api_ctx *ctx, mopt_diag *diag);
/* Long-poll key a manifest request waits on while payload row seq is computed:
 * API_OTA_WAIT_PREFIX + decimal seq ("ota:payload:42"). Whoever finishes that payload calls
 * srv_waiters_notify with the same key (and may repeat it shortly after: a waiter linked just
 * after the first notification must not sleep until its deadline). */
#define API_OTA_WAIT_PREFIX "ota:payload:"

/* Tokens file: lines "scope[,scope] <sha256-hex-of-token> [label]"; '#' comments. */
int api_auth_load(const char *path, api_auth **out, mopt_diag *diag);
void api_auth_destroy(api_auth *a);
/* From an Authorization header value (may be NULL): *scopes, or MOPT_EAUTH. */
int api_auth_check(const api_auth *a, const char *authorization, uint32_t *scopes);
/* 0 when the caller may use route; MOPT_EAUTH / MOPT_EFORBIDDEN otherwise. With ctx->auth NULL
 * every route is allowed. Fills *scopes. */
int api_authorize(const api_ctx *ctx, const api_route *route, const char *authorization,
                  uint32_t *scopes);

#endif
