/* routes.c — the route table (data) and the router.
 *
 * Routes are a table with designated initializers, one row per (method, pattern), guarded by
 * a static_assert so adding a route without its index fails to compile; openapi.yaml lists the
 * same pairs (tests/unit/api/openapi_routes.c checks both ways). The router walks the table
 * segment by segment: a dozen routes make a linear scan cheaper and simpler than a trie.
 * Trade-off: parameters are matched by shape only ({x} = one non-empty segment); values that
 * could escape a path (.., %2F, backslash, control characters) never match, so handlers never
 * see them.
 */
#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api_int.h"

enum {
  R_HEALTHZ, R_READYZ, R_METRICS,
  R_MODELS_UPLOAD, R_MODELS_LIST, R_MODELS_GET, R_MODELS_DELETE, R_MODELS_CONTENT,
  R_JOBS_CREATE, R_JOBS_LIST, R_JOBS_GET, R_JOBS_CANCEL,
  R_RELEASES_LIST, R_RELEASES_PUT, R_RELEASES_GET, R_OTA_MANIFEST, R_OTA_PUBLIC_KEY, R_PAYLOADS_GET,
  R_COUNT_
};

const api_route api_routes[] = {
  [R_HEALTHZ] = {API_GET, "/healthz", api_h_healthz, 0, API_BODY_NONE, 0, "healthz"},
  [R_READYZ] = {API_GET, "/readyz", api_h_readyz, 0, API_BODY_NONE, 0, "readyz"},
  [R_METRICS] = {API_GET, "/metrics", api_h_metrics, API_SCOPE_READ, API_BODY_NONE, 0, "metrics"},
  [R_MODELS_UPLOAD] = {API_POST, "/v1/models", api_h_models_upload, API_SCOPE_WRITE,
                       API_BODY_BLOB, 0, "models_upload"},
  [R_MODELS_LIST] = {API_GET, "/v1/models", api_h_models_list, API_SCOPE_READ, API_BODY_NONE, 0,
                     "models_list"},
  [R_MODELS_GET] = {API_GET, "/v1/models/{id}", api_h_models_get, API_SCOPE_READ, API_BODY_NONE,
                    0, "models_get"},
  [R_MODELS_DELETE] = {API_DELETE, "/v1/models/{id}", api_h_models_delete, API_SCOPE_WRITE,
                       API_BODY_NONE, 0, "models_delete"},
  [R_MODELS_CONTENT] = {API_GET, "/v1/models/{id}/content", api_h_models_content,
                        API_SCOPE_READ, API_BODY_NONE, 0, "models_content"},
  [R_JOBS_CREATE] = {API_POST, "/v1/jobs", api_h_jobs_create, API_SCOPE_WRITE, API_BODY_JSON, 0,
                     "jobs_create"},
  [R_JOBS_LIST] = {API_GET, "/v1/jobs", api_h_jobs_list, API_SCOPE_READ, API_BODY_NONE, 0,
                   "jobs_list"},
  [R_JOBS_GET] = {API_GET, "/v1/jobs/{id}", api_h_jobs_get, API_SCOPE_READ, API_BODY_NONE, 0,
                  "jobs_get"},
  [R_JOBS_CANCEL] = {API_POST, "/v1/jobs/{id}/cancel", api_h_jobs_cancel, API_SCOPE_WRITE,
                     API_BODY_NONE, 0, "jobs_cancel"},
  [R_RELEASES_LIST] = {API_GET, "/v1/releases", api_h_releases_list, API_SCOPE_READ,
                       API_BODY_NONE, 0, "releases_list"},
  [R_RELEASES_PUT] = {API_PUT, "/v1/releases/{name}/{channel}", api_h_releases_put,
                      API_SCOPE_WRITE, API_BODY_JSON, 0, "releases_put"},
  [R_RELEASES_GET] = {API_GET, "/v1/releases/{name}/{channel}", api_h_releases_get,
                      API_SCOPE_READ, API_BODY_NONE, 0, "releases_get"},
  [R_OTA_MANIFEST] = {API_GET, "/v1/ota/{name}/{channel}/manifest", api_h_ota_manifest,
                      API_SCOPE_OTA, API_BODY_NONE, 0, "ota_manifest"},
  /* Public: a public key is no secret, and a device needs it before it holds any token. */
  [R_OTA_PUBLIC_KEY] = {API_GET, "/v1/ota/public-key", api_h_ota_public_key, 0, API_BODY_NONE,
                        0, "ota_public_key"},
  [R_PAYLOADS_GET] = {API_GET, "/v1/payloads/{id}", api_h_payloads_get, API_SCOPE_OTA,
                      API_BODY_NONE, 0, "payloads_get"},
  [R_COUNT_] = {0, NULL, NULL, 0, 0, 0, NULL},
};
_Static_assert(sizeof api_routes / sizeof api_routes[0] == R_COUNT_ + 1,
               "route table: one row per route index plus the terminator");
const size_t api_routes_count = R_COUNT_;

static const char *const method_names[] = {
  [API_GET] = "GET", [API_HEAD] = "HEAD", [API_POST] = "POST", [API_PUT] = "PUT",
  [API_DELETE] = "DELETE", [API_PATCH] = "PATCH", [API_OPTIONS] = "OPTIONS",
  [API_METHOD_OTHER] = "OTHER",
};
_Static_assert(sizeof method_names / sizeof method_names[0] == API_METHOD_OTHER + 1,
               "one name per method");

api_method api_method_parse(const char *s) {
  if (!s) return API_METHOD_OTHER;
  for (int m = 0; m < API_METHOD_OTHER; m++)
    if (strcmp(method_names[m], s) == 0) return (api_method)m;
  return API_METHOD_OTHER;
}

const char *api_method_name(api_method m) {
  return (unsigned)m <= API_METHOD_OTHER ? method_names[m] : "OTHER";
}

#define API_MAX_PARAM_LEN 128

/* A parameter value is safe when it cannot address anything outside its segment. */
static int param_ok(const char *s, size_t n) {
  if (n == 0 || n > API_MAX_PARAM_LEN) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f || c == '\\' || c == '%') return 0;
    if (c == '.' && i + 1 < n && s[i + 1] == '.') return 0;
  }
  return 1;
}

/* Matches path against pattern; on success copies params into buf (if given). */
static int match(const char *pattern, const char *path, const char **params, size_t *n_params,
                 char *buf, size_t bufn) {
  const char *p = pattern, *s = path;
  size_t np = 0, used = 0;
  if (*s != '/') return 0;
  while (*p && *s) {
    if (*p == '{') {
      const char *pe = strchr(p, '}');
      if (!pe) return 0;
      const char *se = strchr(s, '/');
      size_t len = se ? (size_t)(se - s) : strlen(s);
      if (!param_ok(s, len)) return 0;
      if (params) {
        if (np >= API_MAX_PARAMS || used + len + 1 > bufn) return 0;
        memcpy(buf + used, s, len);
        buf[used + len] = 0;
        params[np++] = buf + used;
        used += len + 1;
      }
      p = pe + 1;
      s += len;
      continue;
    }
    if (*p != *s) return 0;
    p++;
    s++;
  }
  if (*p || *s) return 0;
  if (n_params) *n_params = np;
  return 1;
}

static void allow_add(char *allow, size_t n, const char *m) {
  if (!allow || n == 0) return;
  /* Skip duplicates ("GET" listed once even if several rows). */
  size_t ml = strlen(m);
  for (const char *p = allow; (p = strstr(p, m)); p += ml)
    if ((p == allow || p[-1] == ' ') && (p[ml] == ',' || p[ml] == 0)) return;
  size_t used = strlen(allow);
  snprintf(allow + used, n - used, "%s%s", used ? ", " : "", m);
}

int api_route_find(api_method method, const char *path, const api_route **route,
                   const char **params, size_t *n_params, char *param_buf, size_t bufn,
                   char *allow, size_t allown) {
  int shape = 0;
  if (allow && allown) allow[0] = 0;
  if (n_params) *n_params = 0;
  if (!path) return MOPT_ENOTFOUND;
  for (size_t i = 0; i < api_routes_count; i++) {
    const api_route *r = &api_routes[i];
    if (!match(r->pattern, path, NULL, NULL, NULL, 0)) continue;
    shape = 1;
    allow_add(allow, allown, api_method_name(r->method));
    if (r->method == API_GET) allow_add(allow, allown, "HEAD");
    int same = r->method == method || (method == API_HEAD && r->method == API_GET);
    if (same) {
      if (!match(r->pattern, path, params, n_params, param_buf, bufn)) return MOPT_ENOTFOUND;
      *route = r;
      return 0;
    }
  }
  return shape ? MOPT_EMETHOD : MOPT_ENOTFOUND;
}
