/* api_int.h — internals shared by the files of the api module (not a public header).
 *
 * Handler prototypes (the route table in routes.c points at them), small request helpers,
 * the JSON renderers for models and jobs, and the pure parsers (Range, If-None-Match, ids,
 * names) that unit tests exercise directly. Trade-off: exposing the parsers here instead of
 * keeping them static costs a few names, and buys tests that hit them without HTTP.
 */
#ifndef API_INT_H
#define API_INT_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"

/* ---- handlers (one per route) ---- */
int api_h_healthz(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_readyz(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_metrics(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_models_upload(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_models_list(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_models_get(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_models_content(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_models_delete(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_jobs_create(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_jobs_list(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_jobs_get(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_jobs_cancel(api_ctx *ctx, const api_request *req, api_response *resp);

int api_h_releases_put(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_releases_get(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_releases_list(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_ota_manifest(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_ota_public_key(api_ctx *ctx, const api_request *req, api_response *resp);
int api_h_payloads_get(api_ctx *ctx, const api_request *req, api_response *resp);

/* Serves blob hex as an immutable content-addressed resource: strong ETag "<hex>",
 * If-None-Match → 304, a single Range (If-Range: strong ETag match only) → 206, 416 with
 * a Content-Range naming the size when unsatisfiable, Cache-Control public immutable. The body
 * is the file itself (fd + offset + length), never copied. what names the resource in the 500
 * error when the blob file is missing. Used by model content and OTA payloads. */
int api_serve_blob(api_ctx *ctx, const api_request *req, api_response *resp, const char *hex,
                   const char *what);

/* ---- request helpers ---- */
/* Query parameter / header lookups that tolerate a missing accessor (NULL when absent). */
const char *api_query(const api_request *req, const char *key);
const char *api_header_get(const api_request *req, const char *name);

/* ---- validators (1 = valid) ---- */
/* "sha256:" + 64 lowercase hex. */
int api_model_id_valid(const char *s);
/* "job_" + 26 chars of [0-9a-z]. */
int api_job_id_valid(const char *s);
/* Model name / version: 1..maxlen chars of [A-Za-z0-9._/-], no "..", no leading '/',
 * no "//", no trailing '/'. */
int api_name_valid(const char *s, size_t maxlen);

/* ---- HTTP conditionals ---- */
/* Single byte range against a resource of size bytes (RFC 9110 §14).
 * Returns 0 when the whole resource should be served (no header, another unit, a syntax
 * error, or several ranges), 1 with *start and *len for one satisfiable range, or MOPT_ERANGE
 * when the range cannot be satisfied (416). */
int api_range_parse(const char *header, uint64_t size, uint64_t *start, uint64_t *len);
/* 1 when an If-None-Match value (list of entity tags or "*") matches etag (weak comparison). */
int api_etag_match(const char *if_none_match, const char *etag);

/* ---- JSON renderers (malloc'd compact text; NULL on out of memory) ---- */
char *api_model_json(const store_model *m);
char *api_job_json(const store_job *j);

/* Answers a failed store lookup of a `kind` ("model", "job") by id: 404 "no <kind> <id>" at
 * `where` for MOPT_ENOTFOUND, the plain error otherwise. Returns rc (never 0). */
int api_lookup_failed(api_response *resp, int rc, const char *kind, const char *id,
                      const char *where);

/* Parses ?limit= (default 100, 1..1000) and ?cursor= (at most 63 chars). On error fills resp
 * and returns the error. */
int api_list_params(const api_request *req, api_response *resp, uint32_t *limit,
                    const char **cursor);

#define API_LIST_DEFAULT 100
#define API_LIST_MAX 1000

#endif
