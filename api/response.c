/* response.c — api_response helpers and the one error shape every handler answers with.
 *
 * Errors are rendered with jansson from the error table (mopt_errcode / mopt_errhttp), so a
 * status code and its machine code can never disagree. Trade-off: an error body costs a small
 * JSON build even for 404s, in exchange for one code path that always escapes correctly.
 */
#include <assert.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api_int.h"
#include "sb.h"

void api_response_init(api_response *r) {
  memset(r, 0, sizeof *r);
  r->status = 200;
  r->file_fd = -1;
}

void api_response_header(api_response *r, const char *name, const char *fmt, ...) {
  assert(r->n_headers < API_MAX_HEADERS);
  if (r->n_headers >= API_MAX_HEADERS) return;
  api_header *h = &r->headers[r->n_headers++];
  snprintf(h->name, sizeof h->name, "%s", name);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(h->value, sizeof h->value, fmt, ap);
  va_end(ap);
}

void api_response_json(api_response *r, int status, char *text) {
  free(r->body);
  r->status = status;
  r->content_type = "application/json";
  r->body = text;
  r->body_len = text ? strlen(text) : 0;
}

void api_error(api_response *r, int err, const char *message, const char *where,
               const char *detail_json) {
  json_t *detail = NULL;
  if (detail_json) {
    json_error_t je;
    detail = json_loads(detail_json, 0, &je);
    if (detail && !json_is_object(detail)) { json_decref(detail); detail = NULL; }
  }
  if (!detail) detail = json_object();
  /* An empty where is kept: for a job spec it is the JSON pointer of the whole document. */
  if (where) json_object_set_new(detail, "where", json_string(where));
  const char *msg = message && *message ? message : mopt_strerror(err);
  json_t *e = json_pack("{s:{s:s,s:s,s:o}}", "error", "code", mopt_errcode(err), "message", msg,
                        "detail", detail);
  char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
  json_decref(e);
  if (!text) {
    /* Out of memory or invalid UTF-8 in a message: fall back to the table's static text. */
    char buf[256];
    snprintf(buf, sizeof buf, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\",\"detail\":{}}}",
             mopt_errcode(err), mopt_strerror(err));
    text = strdup(buf);
  }
  api_response_json(r, mopt_errhttp(err), text);
  snprintf(r->error_code, sizeof r->error_code, "%s", mopt_errcode(err));
}

void api_error_diag(api_response *r, int err, const mopt_diag *d) {
  api_error(r, err, d && d->msg[0] ? d->msg : NULL, d ? d->where : NULL, NULL);
}

/* ---------------------------------------------------------------- small helpers ---- */

const char *api_query(const api_request *req, const char *key) {
  return req->query ? req->query(req->actx, key) : NULL;
}

const char *api_header_get(const api_request *req, const char *name) {
  return req->header ? req->header(req->actx, name) : NULL;
}

int64_t api_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void api_time_format(int64_t unix_ms, char *buf, size_t n) {
  time_t secs = (time_t)(unix_ms / 1000);
  int ms = (int)(unix_ms % 1000);
  if (ms < 0) { ms += 1000; secs -= 1; }
  struct tm tm;
  gmtime_r(&secs, &tm);
  snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

int api_model_id_valid(const char *s) {
  if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 71) return 0;
  for (const char *p = s + 7; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
  return 1;
}

int api_job_id_valid(const char *s) {
  if (!s || strncmp(s, "job_", 4) != 0 || strlen(s) != 30) return 0;
  for (const char *p = s + 4; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z'))) return 0;
  return 1;
}

int api_name_valid(const char *s, size_t maxlen) {
  if (!s) return 0;
  size_t n = strlen(s);
  if (n == 0 || n > maxlen || s[0] == '/' || s[n - 1] == '/') return 0;
  if (strstr(s, "..") || strstr(s, "//")) return 0;
  for (const char *p = s; *p; p++) {
    char c = *p;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-' || c == '/'))
      return 0;
  }
  return 1;
}

int api_lookup_failed(api_response *resp, int rc, const char *kind, const char *id,
                      const char *where) {
  if (rc == MOPT_ENOTFOUND) {
    char msg[160];
    snprintf(msg, sizeof msg, "no %s %.100s", kind, id);
    api_error(resp, rc, msg, where, NULL);
  } else {
    api_error(resp, rc, NULL, NULL, NULL);
  }
  return rc;
}

int api_list_params(const api_request *req, api_response *resp, uint32_t *limit,
                    const char **cursor) {
  const char *l = api_query(req, "limit");
  *limit = API_LIST_DEFAULT;
  if (l) {
    char *end;
    long v = strtol(l, &end, 10);
    if (!*l || *end || v < 1 || v > API_LIST_MAX) {
      char msg[128];
      snprintf(msg, sizeof msg, "limit must be an integer in 1..%d", API_LIST_MAX);
      api_error(resp, MOPT_EBADREQ, msg, "limit", NULL);
      return MOPT_EBADREQ;
    }
    *limit = (uint32_t)v;
  }
  *cursor = api_query(req, "cursor");
  if (!*cursor) *cursor = "";
  if (strlen(*cursor) > 63) {
    api_error(resp, MOPT_EBADREQ, "cursor is not one this server returned", "cursor", NULL);
    return MOPT_EBADREQ;
  }
  for (const char *p = *cursor; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) {
      api_error(resp, MOPT_EBADREQ, "cursor is not one this server returned", "cursor", NULL);
      return MOPT_EBADREQ;
    }
  return 0;
}

/* ---------------------------------------------------------------- conditionals ---- */

int api_etag_match(const char *inm, const char *etag) {
  if (!inm || !etag) return 0;
  const char *want = etag;
  if (strncmp(want, "W/", 2) == 0) want += 2;
  size_t wl = strlen(want);
  const char *p = inm;
  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    if (!*p) break;
    if (*p == '*') return 1;
    if (strncmp(p, "W/", 2) == 0) p += 2;
    if (*p != '"') {
      /* Not an entity tag: skip to the next comma. */
      while (*p && *p != ',') p++;
      continue;
    }
    const char *q = strchr(p + 1, '"');
    if (!q) return 0;
    size_t tl = (size_t)(q - p) + 1;
    if (tl == wl && memcmp(p, want, wl) == 0) return 1;
    p = q + 1;
  }
  return 0;
}

/* Parses a decimal uint64 prefix; returns chars consumed (0 when none or overflow). */
static size_t parse_u64(const char *s, uint64_t *out) {
  uint64_t v = 0;
  size_t i = 0;
  for (; s[i] >= '0' && s[i] <= '9'; i++) {
    uint64_t d = (uint64_t)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return 0;
    v = v * 10 + d;
  }
  *out = v;
  return i;
}

int api_range_parse(const char *h, uint64_t size, uint64_t *start, uint64_t *len) {
  if (!h) return 0;
  while (*h == ' ' || *h == '\t') h++;
  if (strncasecmp(h, "bytes=", 6) != 0) return 0;   /* another unit: ignore the header */
  const char *p = h + 6;
  while (*p == ' ') p++;
  if (strchr(p, ',')) return 0;                     /* several ranges: serve the whole */
  uint64_t a = 0, b = 0;
  size_t k;
  if (*p == '-') {
    k = parse_u64(p + 1, &b);
    if (k == 0) return 0;
    const char *rest = p + 1 + k;
    while (*rest == ' ') rest++;
    if (*rest) return 0;
    if (b == 0 || size == 0) return MOPT_ERANGE;
    if (b > size) b = size;
    *start = size - b;
    *len = b;
    return 1;
  }
  k = parse_u64(p, &a);
  if (k == 0 || p[k] != '-') return 0;
  const char *q = p + k + 1;
  int open_end = 1;
  if (*q >= '0' && *q <= '9') {
    size_t k2 = parse_u64(q, &b);
    if (k2 == 0) return 0;
    q += k2;
    open_end = 0;
  }
  while (*q == ' ') q++;
  if (*q) return 0;
  if (!open_end && b < a) return 0;                 /* invalid: ignore */
  if (a >= size) return MOPT_ERANGE;
  if (open_end || b >= size) b = size - 1;
  *start = a;
  *len = b - a + 1;
  return 1;
}

/* ---------------------------------------------------------------- renderers ---- */

static json_t *time_or_null(int64_t ms) {
  if (ms <= 0) return json_null();
  char buf[40];
  api_time_format(ms, buf, sizeof buf);
  return json_string(buf);
}

static json_t *str_or_null(const char *s) { return s && *s ? json_string(s) : json_null(); }

/* Embedded JSON text (spec, report, error, opsets) or null when absent/unparsable. */
static json_t *embedded(const char *text) {
  if (!text || !*text) return json_null();
  json_error_t je;
  json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
  return v ? v : json_null();
}

char *api_model_json(const store_model *m) {
  char url[160];
  snprintf(url, sizeof url, "/v1/models/%s/content", m->id);
  json_t *opsets = embedded(m->opsets);
  if (!json_is_object(opsets)) { json_decref(opsets); opsets = json_object(); }
  json_t *o = json_object();
  json_object_set_new(o, "id", json_string(m->id));
  json_object_set_new(o, "name", json_string(m->name));
  json_object_set_new(o, "version", json_string(m->version));
  json_object_set_new(o, "size", json_integer((json_int_t)m->size));
  json_object_set_new(o, "format", json_string(m->format[0] ? m->format : "onnx"));
  json_object_set_new(o, "ir_version", json_integer((json_int_t)m->ir_version));
  json_object_set_new(o, "opsets", opsets);
  json_object_set_new(o, "node_count", json_integer((json_int_t)m->node_count));
  json_object_set_new(o, "weight_count", json_integer((json_int_t)m->weight_count));
  json_object_set_new(o, "param_count", json_integer((json_int_t)m->param_count));
  json_object_set_new(o, "created", time_or_null(m->created));
  json_object_set_new(o, "parent", str_or_null(m->parent));
  json_object_set_new(o, "job", str_or_null(m->job));
  json_object_set_new(o, "content_url", json_string(url));
  char *text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return text;
}

/* ---- hand-built job JSON: embedded documents are spliced as text, not re-encoded ---- */

/* A JSON string, or null for NULL / "". */
static void jb_jstr(mopt_sb *b, const char *s) {
  if (!s || !*s) { mopt_sb_puts(b, "null"); return; }
  mopt_sb_json_str(b, s);
}
static void jb_time(mopt_sb *b, int64_t ms) {
  if (ms <= 0) { mopt_sb_puts(b, "null"); return; }
  char buf[40];
  api_time_format(ms, buf, sizeof buf);
  mopt_sb_puts(b, "\"");
  mopt_sb_puts(b, buf);
  mopt_sb_puts(b, "\"");
}
/* Embeds stored JSON text verbatim (so the worker's numbers keep their own formatting). Every
 * writer of these columns stores one JSON object, validated when written (the spec by
 * api_spec_parse, the report by the scheduler, errors built with jansson), so a GET does not
 * parse them again; text that does not even start like an object is answered as null. */
static void jb_embed(mopt_sb *b, const char *text) {
  while (text && (*text == ' ' || *text == '\n' || *text == '\r' || *text == '\t')) text++;
  if (!text || *text != '{') { mopt_sb_puts(b, "null"); return; }
  size_t n = strlen(text);
  while (n && (text[n - 1] == ' ' || text[n - 1] == '\n' || text[n - 1] == '\r' ||
               text[n - 1] == '\t'))
    n--;
  mopt_sb_add(b, text, n);
}

char *api_job_json(const store_job *j) {
  mopt_sb b = {0};
  char num[64];
  mopt_sb_puts(&b, "{\"id\":");
  jb_jstr(&b, j->id);
  mopt_sb_puts(&b, ",\"state\":");
  jb_jstr(&b, store_job_state_name(j->state));
  double p = j->progress < 0 ? 0 : j->progress > 1 ? 1 : j->progress;
  snprintf(num, sizeof num, ",\"progress\":%.6g", p);
  mopt_sb_puts(&b, num);
  mopt_sb_puts(&b, ",\"step\":");
  jb_jstr(&b, j->step);
  mopt_sb_puts(&b, ",\"created\":");
  jb_time(&b, j->created);
  mopt_sb_puts(&b, ",\"started\":");
  jb_time(&b, j->started);
  mopt_sb_puts(&b, ",\"finished\":");
  jb_time(&b, j->finished);
  mopt_sb_puts(&b, ",\"model\":");
  jb_jstr(&b, j->model);
  /* The spec is our own normalized text: spliced without a parse (hot path of GET). */
  mopt_sb_puts(&b, ",\"spec\":");
  if (j->spec && j->spec[0] == '{') mopt_sb_puts(&b, j->spec);
  else mopt_sb_puts(&b, "null");
  mopt_sb_puts(&b, ",\"output\":");
  jb_jstr(&b, j->output);
  mopt_sb_puts(&b, ",\"output_url\":");
  if (j->output[0]) {
    char url[160];
    snprintf(url, sizeof url, "/v1/models/%s/content", j->output);
    jb_jstr(&b, url);
  } else {
    mopt_sb_puts(&b, "null");
  }
  mopt_sb_puts(&b, ",\"report\":");
  jb_embed(&b, j->report);
  mopt_sb_puts(&b, ",\"error\":");
  jb_embed(&b, j->error);
  snprintf(num, sizeof num, ",\"cancel_requested\":%s,\"rev\":%llu}",
           j->cancel_requested ? "true" : "false", (unsigned long long)j->rev);
  mopt_sb_puts(&b, num);
  if (b.oom) { free(b.buf); return NULL; }
  return b.buf;
}
