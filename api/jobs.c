/* jobs.c — the /v1/jobs handlers: submit (validate, dedup by key, queue), list, get with
 * ETag and long-poll, cancel.
 *
 * A job is identified for caching by its key: SHA-256 of model id, normalized spec and moptd
 * version (contracts.md §2), so a repeat of a succeeded job is answered from the index without
 * recomputing. Long-poll is cooperative with the adapter: the handler answers, or asks to be
 * called again when the job's rev moves or a deadline passes (api_response.wait_*).
 * Trade-off: the handler re-reads the row on every invocation instead of caching it; one indexed
 * SELECT is cheaper than any invalidation scheme and keeps SQLite the only truth.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "job_spec.h"
#include "mopt.h"

static int terminal(int state) {
  return state == STORE_JOB_SUCCEEDED || state == STORE_JOB_FAILED ||
         state == STORE_JOB_CANCELLED;
}

static void answer_job(api_response *resp, int status, const store_job *j) {
  char *t = api_job_json(j);
  if (!t) { api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL); return; }
  api_response_json(resp, status, t);
}

/* Job key = sha256 hex of model id + "\n" + normalized spec + "\n" + MOPT_VERSION. */
static int job_key(const char *model, const char *norm, char key[65]) {
  size_t n = strlen(model) + strlen(norm) + strlen(MOPT_VERSION) + 3;
  char *buf = malloc(n);
  if (!buf) return MOPT_ENOMEM;
  int k = snprintf(buf, n, "%s\n%s\n%s", model, norm, MOPT_VERSION);
  mopt_sha256_hex((const uint8_t *)buf, (size_t)k, key);
  free(buf);
  return 0;
}

/* Resolves every pass's "anchor" to a model id: a release to its current model, a model id
 * checked to exist. On success *norm is re-normalized with the ids (so the job key and the
 * worker's spec name the model, not the moving release). On failure the response is set
 * (404 with the pointer /passes/N/anchor when the release or model is unknown). */
static int resolve_anchors(store_conn *c, mopt_spec *spec, char **norm, api_response *resp) {
  int changed = 0;
  for (size_t i = 0; i < spec->n_passes; i++) {
    mopt_pass *p = &spec->passes[i];
    if (!p->use_anchor) continue;
    char where[48], msg[320];
    snprintf(where, sizeof where, "/passes/%zu/anchor", i);
    int rc;
    if (strncmp(p->anchor, "release:", 8) == 0) {
      char name[208];
      snprintf(name, sizeof name, "%s", p->anchor + 8);
      char *slash = strchr(name, '/');
      if (slash) *slash = 0;
      store_release r;
      rc = store_release_current(c, name, slash ? slash + 1 : "", &r);
      if (rc == 0) {
        snprintf(p->anchor, sizeof p->anchor, "%s", r.model);
        changed = 1;
      }
      snprintf(msg, sizeof msg, "no release %.200s (publish one first)", p->anchor);
    } else {
      store_model m;
      rc = store_model_get(c, p->anchor, &m);
      snprintf(msg, sizeof msg, "no model %.80s to anchor on", p->anchor);
    }
    if (rc) {
      api_error(resp, rc, rc == MOPT_ENOTFOUND ? msg : NULL, where, NULL);
      return rc;
    }
  }
  if (changed) {
    char *n = api_spec_normalize(spec);
    if (!n) {
      api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL);
      return MOPT_ENOMEM;
    }
    free(*norm);
    *norm = n;
  }
  return 0;
}

int api_h_jobs_create(api_ctx *ctx, const api_request *req, api_response *resp) {
  mopt_spec spec;
  mopt_diag d;
  memset(&d, 0, sizeof d);
  char *model = NULL, *norm = NULL;
  if (!req->body || req->body_len == 0) {
    api_error(resp, MOPT_EJSON, "empty body: expected a JSON job spec", "body", NULL);
    return MOPT_EJSON;
  }
  if (ctx->limits.max_json_bytes && req->body_len > ctx->limits.max_json_bytes) {
    api_error(resp, MOPT_ELIMIT, "the job spec is larger than the JSON body limit", "body", NULL);
    return MOPT_ELIMIT;
  }
  int rc = api_spec_parse(req->body, req->body_len, 1, &spec, &model, &norm, &d);
  if (rc) {
    api_error_diag(resp, rc, &d);
    return rc;
  }
  store_conn *c = store_conn_get(ctx->st);
  rc = resolve_anchors(c, &spec, &norm, resp);
  mopt_spec_free(&spec);
  if (rc) {
    free(model);
    free(norm);
    return rc;
  }

  store_model m;
  rc = store_model_get(c, model, &m);
  if (rc) {
    char msg[128];
    snprintf(msg, sizeof msg, "no model %s (upload it first with POST /v1/models)", model);
    api_error(resp, rc, rc == MOPT_ENOTFOUND ? msg : NULL, "/model", NULL);
    free(model);
    free(norm);
    return rc;
  }

  store_job j;
  memset(&j, 0, sizeof j);
  rc = job_key(model, norm, j.key);
  snprintf(j.model, sizeof j.model, "%s", model);
  j.spec = norm;
  j.state = STORE_JOB_QUEUED;
  int existing = 0;
  if (rc == 0) rc = store_job_create(c, &j, ctx->limits.max_queued_jobs, &existing);
  free(model);
  free(norm);   /* the store copies it; on a cache hit *j holds the store's strings instead */
  if (rc == MOPT_EBUSY) {
    char msg[128];
    snprintf(msg, sizeof msg, "the queue holds %u jobs, its limit; retry later",
             ctx->limits.max_queued_jobs);
    api_error(resp, rc, msg, NULL, NULL);
    api_response_header(resp, "Retry-After", "%u",
                        ctx->limits.retry_after_s ? ctx->limits.retry_after_s : 1);
    return rc;
  }
  if (rc == MOPT_ENOTFOUND) {
    api_error(resp, rc, "the model was deleted while the job was being submitted", "/model",
              NULL);
    return rc;
  }
  if (rc) {
    api_error(resp, rc, NULL, NULL, NULL);
    return rc;
  }
  if (existing) {
    api_response_header(resp, "Location", "/v1/jobs/%s", j.id);
    answer_job(resp, 200, &j);
    store_job_free(&j);
    return 0;
  }
  char id[40];
  snprintf(id, sizeof id, "%s", j.id);
  store_job fresh;
  memset(&fresh, 0, sizeof fresh);
  if (ctx->hooks.jobs_submitted) ctx->hooks.jobs_submitted(ctx->hooks.hctx);
  api_response_header(resp, "Location", "/v1/jobs/%s", id);
  if (store_job_get(c, id, &fresh) == 0) {
    answer_job(resp, 202, &fresh);
    store_job_free(&fresh);
  } else {
    j.spec = NULL;   /* freed above; render without it rather than fail the accepted job */
    answer_job(resp, 202, &j);
  }
  return 0;
}

int api_h_jobs_list(api_ctx *ctx, const api_request *req, api_response *resp) {
  uint32_t limit;
  const char *cursor;
  int rc = api_list_params(req, resp, &limit, &cursor);
  if (rc) return rc;
  int state = -1;
  const char *s = api_query(req, "state");
  if (s) {
    state = store_job_state_parse(s);
    if (state < 0) {
      api_error(resp, MOPT_EBADREQ,
                "state must be one of queued, running, succeeded, failed, cancelled", "state",
                NULL);
      return MOPT_EBADREQ;
    }
  }
  const char *model = api_query(req, "model");
  if (model && !api_model_id_valid(model)) {
    api_error(resp, MOPT_EBADREQ, "model filter must be \"sha256:<64 lowercase hex>\"", "model",
              NULL);
    return MOPT_EBADREQ;
  }
  store_job *items = calloc(limit, sizeof *items);
  if (!items) { api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL); return MOPT_ENOMEM; }
  uint32_t n = 0;
  char next[64] = "";
  rc = store_job_list(store_conn_get(ctx->st), state, model, cursor, limit, items, &n, next);
  if (rc) {
    free(items);
    int bad_cursor = rc == MOPT_EINVAL || rc == MOPT_EBADREQ;
    api_error(resp, rc, bad_cursor ? "cursor is not one this server returned" : NULL,
              bad_cursor ? "cursor" : NULL, NULL);
    return rc;
  }
  json_t *arr = json_array();
  for (uint32_t i = 0; i < n; i++) {
    char *t = api_job_json(&items[i]);
    json_error_t je;
    json_t *v = t ? json_loads(t, 0, &je) : NULL;
    free(t);
    if (v) json_array_append_new(arr, v);
    store_job_free(&items[i]);
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

/* Validates params[0] as a job id and loads the row; fills resp on error. */
static int load_job(api_ctx *ctx, const api_request *req, api_response *resp, store_job *j) {
  const char *id = req->n_params ? req->params[0] : NULL;
  memset(j, 0, sizeof *j);
  if (!api_job_id_valid(id)) {
    api_error(resp, MOPT_EBADREQ, "job id must be \"job_\" followed by 26 lowercase characters",
              "id", NULL);
    return MOPT_EBADREQ;
  }
  int rc = store_job_get(store_conn_get(ctx->st), id, j);
  return rc ? api_lookup_failed(resp, rc, "job", id, "id") : 0;
}

int api_h_jobs_get(api_ctx *ctx, const api_request *req, api_response *resp) {
  uint32_t wait_s = 0;
  const char *w = api_query(req, "wait");
  if (w) {
    char *end;
    long v = strtol(w, &end, 10);
    if (!*w || *end || v < 0) {
      char msg[96];
      snprintf(msg, sizeof msg, "wait must be a whole number of seconds (at most %u)",
               ctx->limits.max_wait_s);
      api_error(resp, MOPT_EBADREQ, msg, "wait", NULL);
      return MOPT_EBADREQ;
    }
    wait_s = v > (long)ctx->limits.max_wait_s ? ctx->limits.max_wait_s : (uint32_t)v;
  }
  store_job j;
  int rc = load_job(ctx, req, resp, &j);
  if (rc) return rc;
  char etag[64];
  snprintf(etag, sizeof etag, "\"%s.%llu\"", j.id, (unsigned long long)j.rev);
  const char *inm = api_header_get(req, "If-None-Match");
  int matched = inm && api_etag_match(inm, etag);
  int first_call = req->waited_deadline_ms == 0;

  if (wait_s > 0 && first_call && !terminal(j.state) && (matched || !inm)) {
    snprintf(resp->wait_job, sizeof resp->wait_job, "%s", j.id);
    resp->wait_rev = j.rev;
    resp->wait_deadline_ms = api_now_ms() + (int64_t)wait_s * 1000;
    store_job_free(&j);
    return 0;
  }
  api_response_header(resp, "ETag", "%s", etag);
  api_response_header(resp, "Cache-Control", "no-cache");
  if (matched) {
    resp->status = 304;
    store_job_free(&j);
    return 0;
  }
  answer_job(resp, 200, &j);
  store_job_free(&j);
  return 0;
}

int api_h_jobs_cancel(api_ctx *ctx, const api_request *req, api_response *resp) {
  store_job j;
  int rc = load_job(ctx, req, resp, &j);
  if (rc) return rc;
  store_conn *c = store_conn_get(ctx->st);
  int was_running = 0;
  rc = store_job_cancel(c, j.id, &was_running);
  if (rc == MOPT_ECONFLICT) {
    char msg[96];
    snprintf(msg, sizeof msg, "the job is already %s", store_job_state_name(j.state));
    char det[64];
    snprintf(det, sizeof det, "{\"state\":\"%s\"}", store_job_state_name(j.state));
    api_error(resp, rc, msg, "id", det);
    store_job_free(&j);
    return rc;
  }
  if (rc) {
    api_error(resp, rc, NULL, "id", NULL);
    store_job_free(&j);
    return rc;
  }
  if (was_running && ctx->hooks.job_cancel) ctx->hooks.job_cancel(ctx->hooks.hctx, j.id);
  if (ctx->hooks.job_changed) ctx->hooks.job_changed(ctx->hooks.hctx, j.id);
  store_job after;
  memset(&after, 0, sizeof after);
  if (store_job_get(c, j.id, &after) == 0) {
    answer_job(resp, 200, &after);
    store_job_free(&after);
  } else {
    answer_job(resp, 200, &j);
  }
  store_job_free(&j);
  return 0;
}
