/* health.c — /healthz, /readyz and /metrics.
 *
 * Liveness answers without touching storage (a stuck disk must not make the orchestrator kill
 * a process that is only slow); readiness asks the server's hook. Metrics combine what the
 * index knows (jobs by state, bytes stored) with the server's own counters (hooks.metrics).
 * Trade-off: job counts come from one COUNT query per scrape rather than from counters kept in
 * memory, so they are exact across restarts at the cost of a small query every scrape.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "sb.h"
#include "mopt.h"

int api_h_healthz(api_ctx *ctx, const api_request *req, api_response *resp) {
  (void)ctx;
  (void)req;
  api_response_json(resp, 200, strdup("{\"status\":\"ok\"}"));
  api_response_header(resp, "Cache-Control", "no-store");
  return 0;
}

int api_h_readyz(api_ctx *ctx, const api_request *req, api_response *resp) {
  (void)req;
  int ready = ctx->hooks.ready ? ctx->hooks.ready(ctx->hooks.hctx) : 1;
  api_response_header(resp, "Cache-Control", "no-store");
  if (!ready) {
    api_error(resp, MOPT_EUNAVAILABLE, "not ready (starting up or shutting down)", NULL, NULL);
    return MOPT_EUNAVAILABLE;
  }
  api_response_json(resp, 200, strdup("{\"status\":\"ready\"}"));
  return 0;
}

int api_h_metrics(api_ctx *ctx, const api_request *req, api_response *resp) {
  (void)req;
  store_conn *c = store_conn_get(ctx->st);
  uint64_t counts[5] = {0};
  uint64_t bytes = 0;
  int rc = store_job_counts(c, counts);
  if (rc == 0) rc = store_bytes_total(c, &bytes);
  if (rc) {
    api_error(resp, rc, "cannot read the index for metrics", "store", NULL);
    return rc;
  }
  mopt_sb b = {0};
  mopt_sb_printf(&b, "# HELP moptd_build_info moptd version.\n# TYPE moptd_build_info gauge\n");
  mopt_sb_printf(&b, "moptd_build_info{version=\"%s\"} 1\n", MOPT_VERSION);
  mopt_sb_printf(&b, "# HELP moptd_jobs Jobs in the index by state.\n# TYPE moptd_jobs gauge\n");
  for (int s = 0; s < 5; s++)
    mopt_sb_printf(&b, "moptd_jobs{state=\"%s\"} %llu\n", store_job_state_name(s),
            (unsigned long long)counts[s]);
  mopt_sb_printf(&b, "# HELP moptd_store_bytes Bytes of indexed model blobs.\n"
              "# TYPE moptd_store_bytes gauge\n");
  mopt_sb_printf(&b, "moptd_store_bytes %llu\n", (unsigned long long)bytes);
  if (ctx->hooks.metrics) {
    char *extra = NULL;
    size_t elen = 0;
    if (ctx->hooks.metrics(ctx->hooks.hctx, &extra, &elen) == 0 && extra) {
      mopt_sb_add(&b, extra, elen);
      if (elen && extra[elen - 1] != '\n') mopt_sb_add(&b, "\n", 1);
    }
    free(extra);
  }
  if (b.oom) {
    free(b.buf);
    api_error(resp, MOPT_ENOMEM, NULL, NULL, NULL);
    return MOPT_ENOMEM;
  }
  resp->status = 200;
  resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
  resp->body = b.buf;
  resp->body_len = b.len;
  api_response_header(resp, "Cache-Control", "no-store");
  return 0;
}
