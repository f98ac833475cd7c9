/* http.c — the libmicrohttpd adapter: HTTP requests in, api handlers, HTTP responses out.
 *
 * libmicrohttpd runs an epoll thread pool; each connection stays on one pool thread. Per
 * request this file routes (api_route_find), authorizes (api_authorize) and checks the declared
 * body size before a single body byte is read, streams model uploads into the blob store,
 * buffers JSON bodies up to their limit, calls the handler, and sends JSON or a file range
 * (sendfile through MHD_create_response_from_fd_at_offset64, never a copy in memory).
 * Long-polls suspend the connection and register a waiter; the scheduler and handlers wake
 * it through srv_waiters_notify. Per-request state comes from a per-thread free list, so a
 * request allocates nothing but what its handler returns.
 * Trade-off: handler work (SQLite, fsync of uploads) runs on the pool thread itself, which is
 * the simplest correct model; handlers never compute, so they stay short.
 */
#include "srv.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* A client that sent a small body along with a request refused before reading (401, 404,
 * ...) gets its body drained so the answer is not lost to a TCP reset; larger bodies get
 * the answer at once and the connection is closed. */
#define DRAIN_LIMIT (64u * 1024u)
#define MAX_WAIT_LOOPS 4
/* A chunked body that outgrows its limit is read and thrown away up to this many more bytes so
 * the client still gets its 413; past that the connection is closed. */
#define DISCARD_LIMIT (64ull * 1024u * 1024u)

struct srv_http {
  struct MHD_Daemon *d;
  api_ctx *ctx;
  const srv_config *cfg;
  atomic_int quiescing;
};

enum { P_NEW = 0, P_BODY = 1, P_WAITING = 2, P_DONE = 3 };

typedef struct req_ctx {
  srv_http *h;
  struct MHD_Connection *conn;
  const api_route *route;
  size_t route_index;
  int phase;
  int64_t t0_us;
  /* Refusal decided before the body was read: err != 0, answered once the (small) body is
   * drained or at once. */
  int early_err;
  char early_msg[320];
  char allow[64];
  uint64_t max_body, received;
  int too_large;
  store_upload *upload;
  char *body;
  size_t body_len, body_cap;
  int status;
  uint64_t bytes;
  char error_code[48];
  int64_t wait_deadline_ms;
  int wait_loops;
  srv_waiter waiter;
  char request_id[72];
  char param_buf[512];
  api_request req;
  api_response resp;
  struct req_ctx *next_free;
} req_ctx;

static _Thread_local req_ctx *free_list;
static _Thread_local unsigned free_count;
/* The key only exists for its destructor: it frees a pool thread's free list when the thread
 * ends (MHD_stop_daemon), which _Thread_local alone would leak. */
static pthread_key_t free_key;
static pthread_once_t free_once = PTHREAD_ONCE_INIT;

static void free_chain(void *head) {
  for (req_ctx *rc = head, *next; rc; rc = next) {
    next = rc->next_free;
    free(rc);
  }
}
static void free_key_init(void) { pthread_key_create(&free_key, free_chain); }

static req_ctx *ctx_get(void) {
  req_ctx *rc = free_list;
  if (rc) {
    free_list = rc->next_free;
    free_count--;
    pthread_setspecific(free_key, free_list);
  } else {
    rc = malloc(sizeof *rc);
    if (!rc) return NULL;
  }
  /* Only the header part needs zeroing; req/resp are initialised where used. */
  memset(rc, 0, offsetof(req_ctx, param_buf));
  rc->req.n_params = 0;
  rc->resp.body = NULL;
  rc->resp.file_fd = -1;
  return rc;
}

static void ctx_put(req_ctx *rc) {
  if (free_count >= 256) {
    free(rc);
    return;
  }
  rc->next_free = free_list;
  free_list = rc;
  free_count++;
  pthread_setspecific(free_key, free_list);
}

static void resp_release(api_response *r) {
  free(r->body);
  r->body = NULL;
  if (r->file_fd >= 0) close(r->file_fd);
  r->file_fd = -1;
}

/* ------------------------------------------------------------- lookups ---- */
static const char *lookup_query(void *actx, const char *key) {
  req_ctx *rc = actx;
  return MHD_lookup_connection_value(rc->conn, MHD_GET_ARGUMENT_KIND, key);
}

static const char *lookup_header(void *actx, const char *name) {
  req_ctx *rc = actx;
  return MHD_lookup_connection_value(rc->conn, MHD_HEADER_KIND, name);
}

/* --------------------------------------------------------------- sending ---- */
static enum MHD_Result send_response(req_ctx *rc, api_response *r) {
  struct MHD_Response *mr = NULL;
  int has_entity = 0;
  if (r->status <= 0) r->status = 500;
  if (r->file_fd >= 0 && r->file_length > 0) {
    mr = MHD_create_response_from_fd_at_offset64(r->file_length, r->file_fd, r->file_offset);
    if (mr) {
      r->file_fd = -1;   /* MHD closes it */
      rc->bytes = r->file_length;
      has_entity = 1;
    }
  } else if (r->body && r->body_len) {
    mr = MHD_create_response_from_buffer(r->body_len, r->body, MHD_RESPMEM_MUST_FREE);
    if (mr) {
      rc->bytes = r->body_len;
      r->body = NULL;   /* MHD frees it */
      has_entity = 1;
    }
  } else {
    mr = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    rc->bytes = 0;
    has_entity = r->file_fd >= 0 || r->body != NULL;   /* an empty file or body */
  }
  if (!mr) {
    resp_release(r);
    return MHD_NO;
  }
  if (has_entity || r->status >= 400)
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE,
                            r->content_type ? r->content_type : "application/json");
  MHD_add_response_header(mr, "X-Request-Id", rc->request_id);
  for (size_t i = 0; i < r->n_headers && i < API_MAX_HEADERS; i++)
    MHD_add_response_header(mr, r->headers[i].name, r->headers[i].value);
  rc->status = r->status;
  if (r->error_code[0]) snprintf(rc->error_code, sizeof rc->error_code, "%s", r->error_code);
  enum MHD_Result ok = MHD_queue_response(rc->conn, (unsigned)r->status, mr);
  MHD_destroy_response(mr);
  resp_release(r);
  rc->phase = P_DONE;
  return ok;
}

static enum MHD_Result send_error(req_ctx *rc, int err, const char *msg) {
  api_response_init(&rc->resp);
  api_error(&rc->resp, err, msg && *msg ? msg : NULL, rc->req.path, NULL);
  if (err == MOPT_EMETHOD && rc->allow[0]) api_response_header(&rc->resp, "Allow", "%s", rc->allow);
  if (err == MOPT_EAUTH)
    api_response_header(&rc->resp, "WWW-Authenticate", "Bearer realm=\"moptd\"");
  if (err == MOPT_EUNAVAILABLE) api_response_header(&rc->resp, "Retry-After", "1");
  return send_response(rc, &rc->resp);
}

/* ------------------------------------------------------------- long-poll ---- */
static void waiter_resume(srv_waiter *w) {
  req_ctx *rc = w->ctx;
  MHD_resume_connection(rc->conn);
}

/* Runs the handler; suspends the connection when it asks to wait. A handler that asked to
 * wait is called again with req.waited_deadline_ms set (after a wake-up, the deadline, or at
 * once when waiting is pointless) and then answers. */
static enum MHD_Result run_handler(req_ctx *rc) {
  srv_http *h = rc->h;
  for (int tries = 0;; tries++) {
    api_response *r = &rc->resp;
    api_response_init(r);
    rc->req.waited_deadline_ms = rc->wait_deadline_ms;
    int e = rc->route->handler(h->ctx, &rc->req, r);
    if (rc->req.upload) {
      if (!r->upload_consumed) store_upload_abort(rc->req.upload);
      rc->req.upload = NULL;
      rc->upload = NULL;
    }
    if (e != 0 && (r->status < 400 || (!r->body && r->file_fd < 0))) {
      resp_release(r);
      api_response_init(r);
      api_error(r, e, NULL, rc->req.path, NULL);
    }
    if (!r->wait_job[0]) return send_response(rc, r);
    if (tries >= MAX_WAIT_LOOPS) {   /* a handler that never stops asking: answer anyway */
      resp_release(r);
      api_response_init(r);
      api_error(r, MOPT_EINTERNAL, "long-poll handler did not answer", rc->req.path, NULL);
      return send_response(rc, r);
    }
    if (rc->wait_deadline_ms == 0) rc->wait_deadline_ms = r->wait_deadline_ms;
    if (rc->wait_deadline_ms == 0) rc->wait_deadline_ms = 1;   /* "re-invoked" marker */
    resp_release(r);
    /* Past the deadline or shutting down: ask the handler for its answer now. */
    if (srv_now_ms() >= rc->wait_deadline_ms || atomic_load(&h->quiescing)) continue;

    srv_waiter *w = &rc->waiter;
    memset(w, 0, sizeof *w);
    snprintf(w->job, sizeof w->job, "%s", r->wait_job);
    w->deadline_ms = rc->wait_deadline_ms;
    w->resume = waiter_resume;
    w->ctx = rc;
    srv_waiters_add(w);
    /* Close the race between the handler reading the rev and the waiter being linked. */
    uint64_t rev = 0;
    store_conn *c = store_conn_get(h->ctx->st);
    if (c && store_job_rev(c, w->job, &rev) == 0 && rev != r->wait_rev) {
      srv_waiters_remove(w);
      continue;
    }
    rc->phase = P_WAITING;
    MHD_suspend_connection(rc->conn);
    if (srv_waiters_arm(w)) MHD_resume_connection(rc->conn);
    return MHD_YES;
  }
}

/* ------------------------------------------------------------ first call ---- */
static int is_chunked(struct MHD_Connection *conn) {
  const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
  return te && strcasestr(te, "chunked") != NULL;
}

/* Decides everything that must be decided before the body: route, auth, size. Returns
 * MHD_YES to continue (maybe with rc->early_err set and the answer deferred). */
static enum MHD_Result first_call(req_ctx *rc, const char *url, const char *method) {
  srv_http *h = rc->h;
  api_ctx *ctx = h->ctx;
  api_request *q = &rc->req;
  memset(q, 0, sizeof *q);
  q->method = api_method_parse(method);
  q->path = url;
  q->query = lookup_query;
  q->header = lookup_header;
  q->actx = rc;
  q->request_id = rc->request_id;
  rc->route_index = api_routes_count;

  const char *rid = MHD_lookup_connection_value(rc->conn, MHD_HEADER_KIND, "X-Request-Id");
  if (srv_request_id_ok(rid)) snprintf(rc->request_id, sizeof rc->request_id, "%s", rid);
  else srv_request_id(rc->request_id);

  const char *cl = MHD_lookup_connection_value(rc->conn, MHD_HEADER_KIND, "Content-Length");
  uint64_t declared = 0;
  int has_cl = 0;
  if (cl) {
    char *end;
    errno = 0;
    declared = strtoull(cl, &end, 10);
    has_cl = !errno && end != cl;
  }
  int chunked = is_chunked(rc->conn);
  int has_body = (has_cl && declared > 0) || chunked;

  int e = api_route_find(q->method, url, &rc->route, q->params, &q->n_params, rc->param_buf,
                         sizeof rc->param_buf, rc->allow, sizeof rc->allow);
  if (e == 0) {
    rc->route_index = (size_t)(rc->route - api_routes);
    e = api_authorize(ctx, rc->route, lookup_header(rc, "Authorization"), &q->scopes);
  }
  if (e == 0) {
    rc->max_body = rc->route->max_body;
    if (!rc->max_body)
      rc->max_body = rc->route->body == API_BODY_BLOB ? ctx->limits.max_model_bytes
                                                      : ctx->limits.max_json_bytes;
    if (has_cl && declared > rc->max_body) {
      snprintf(rc->early_msg, sizeof rc->early_msg,
               "request body of %llu bytes exceeds the limit of %llu bytes",
               (unsigned long long)declared, (unsigned long long)rc->max_body);
      e = MOPT_ELIMIT;
      has_body = 1;
      declared = UINT64_MAX;   /* never drain: answer now */
    } else if (rc->route->body == API_BODY_BLOB && !has_cl && !chunked) {
      e = MOPT_ELENGTH;
      snprintf(rc->early_msg, sizeof rc->early_msg,
               "uploads need Content-Length or chunked Transfer-Encoding");
    } else if (rc->route->body == API_BODY_BLOB) {
      e = store_upload_begin(ctx->st, &rc->upload);
      if (e) {
        rc->upload = NULL;
        snprintf(rc->early_msg, sizeof rc->early_msg, "cannot start the upload: %s",
                 mopt_strerror(e));
      }
    }
  } else if (e == MOPT_ENOTFOUND) {
    snprintf(rc->early_msg, sizeof rc->early_msg, "no route for %s %.100s", method, url);
  } else if (e == MOPT_EMETHOD) {
    snprintf(rc->early_msg, sizeof rc->early_msg, "%s is not allowed on %.100s (allowed: %s)",
             method, url, rc->allow);
  }
  if (e == 0) {
    if (rc->route->body == API_BODY_NONE && has_body) rc->max_body = DRAIN_LIMIT;
    rc->phase = P_BODY;
    return MHD_YES;
  }
  rc->early_err = e;
  rc->phase = P_BODY;
  /* Answer at the end of the request when there is no body or a small one (keeps the
   * connection alive and the answer is not lost to a reset); at once for large bodies. */
  if (has_body && (chunked || declared > DRAIN_LIMIT)) return send_error(rc, e, rc->early_msg);
  return MHD_YES;
}

/* ----------------------------------------------------------- body chunks ---- */
static enum MHD_Result on_body(req_ctx *rc, const char *data, size_t n) {
  if (rc->early_err || rc->too_large) {
    rc->received += n;
    return rc->received > rc->max_body + DISCARD_LIMIT ? MHD_NO : MHD_YES;
  }
  if (rc->received + n > rc->max_body) {   /* chunked body growing past the limit */
    rc->too_large = 1;
    rc->received += n;
    if (rc->upload) {
      store_upload_abort(rc->upload);
      rc->upload = NULL;
    }
    free(rc->body);
    rc->body = NULL;
    /* libmicrohttpd cannot answer in the middle of a body: the rest is discarded (up to
     * DISCARD_LIMIT) and the 413 goes out when the body ends. */
    return MHD_YES;
  }
  rc->received += n;
  if (rc->route->body == API_BODY_BLOB) {
    int e = store_upload_write(rc->upload, data, n);
    if (e) {
      store_upload_abort(rc->upload);
      rc->upload = NULL;
      rc->early_err = e;
      snprintf(rc->early_msg, sizeof rc->early_msg, "cannot store the upload: %s",
               mopt_strerror(e));
    }
    return MHD_YES;
  }
  if (rc->route->body == API_BODY_NONE) return MHD_YES;   /* discarded */
  if (rc->body_len + n > rc->body_cap) {
    size_t cap = rc->body_cap ? rc->body_cap : 4096;
    while (cap < rc->body_len + n) cap *= 2;
    if (cap > rc->max_body) cap = rc->max_body;
    char *nb = realloc(rc->body, cap);
    if (!nb) {
      rc->early_err = MOPT_ENOMEM;
      return MHD_YES;
    }
    rc->body = nb;
    rc->body_cap = cap;
  }
  memcpy(rc->body + rc->body_len, data, n);
  rc->body_len += n;
  return MHD_YES;
}

/* ------------------------------------------------------------ final call ---- */
static enum MHD_Result on_complete(req_ctx *rc) {
  if (rc->early_err) return send_error(rc, rc->early_err, rc->early_msg);
  if (rc->too_large) {
    char msg[160];
    snprintf(msg, sizeof msg, "request body exceeds the limit of %llu bytes",
             (unsigned long long)rc->max_body);
    return send_error(rc, MOPT_ELIMIT, msg);
  }
  if (rc->upload) {
    int e = store_upload_finish(rc->upload, rc->req.upload_hex, &rc->req.upload_size);
    if (e) {
      store_upload_abort(rc->upload);
      rc->upload = NULL;
      return send_error(rc, e, "cannot finish the upload");
    }
    rc->req.upload = rc->upload;
  }
  if (rc->route->body == API_BODY_JSON) {
    rc->req.body = rc->body ? rc->body : "";
    rc->req.body_len = rc->body_len;
  }
  return run_handler(rc);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  srv_http *h = cls;
  req_ctx *rc = *con_cls;
  (void)version;
  if (!rc) {
    rc = ctx_get();
    if (!rc) return MHD_NO;
    rc->h = h;
    rc->conn = conn;
    rc->t0_us = srv_mono_us();
    *con_cls = rc;
    srv_metrics_inflight(1);
    return first_call(rc, url, method);
  }
  if (rc->phase == P_DONE) {   /* answered early; MHD still hands us the body */
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (*upload_data_size) {
    enum MHD_Result ok = on_body(rc, upload_data, *upload_data_size);
    *upload_data_size = 0;
    return ok;
  }
  if (rc->phase == P_WAITING) {   /* resumed long-poll */
    rc->phase = P_BODY;
    return run_handler(rc);
  }
  return on_complete(rc);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  req_ctx *rc = *con_cls;
  (void)cls;
  (void)conn;
  if (!rc) return;
  *con_cls = NULL;
  int64_t dur = srv_mono_us() - rc->t0_us;
  srv_waiters_remove(&rc->waiter);
  if (rc->upload) store_upload_abort(rc->upload);
  if (rc->req.upload && rc->req.upload != rc->upload) store_upload_abort(rc->req.upload);
  free(rc->body);
  rc->body = NULL;
  if (rc->phase != P_DONE) rc->status = 0;
  srv_metrics_inflight(-1);
  if (rc->status) srv_metrics_request(rc->route_index, rc->status, dur);
  if (srv_log_enabled(SRV_LOG_INFO)) {
    char buf[1024];
    srv_jbuf j;
    srv_log_begin(&j, buf, sizeof buf, rc->status >= 500 || !rc->status ? SRV_LOG_WARN
                                                                          : SRV_LOG_INFO,
                  "request");
    srv_jbuf_str(&j, "request_id", rc->request_id);
    srv_jbuf_str(&j, "method", api_method_name(rc->req.method));
    srv_jbuf_str(&j, "route", rc->route_index < api_routes_count
                                  ? api_routes[rc->route_index].name : "unmatched");
    srv_jbuf_strn(&j, "path", rc->req.path ? rc->req.path : "",
                  rc->req.path ? strnlen(rc->req.path, 200) : 0);
    srv_jbuf_int(&j, "status", rc->status);
    srv_jbuf_num(&j, "duration_ms", (double)dur / 1000.0);
    srv_jbuf_int(&j, "bytes", (int64_t)rc->bytes);
    if (rc->received) srv_jbuf_int(&j, "body_bytes", (int64_t)rc->received);
    if (rc->error_code[0]) srv_jbuf_str(&j, "error", rc->error_code);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
      srv_jbuf_str(&j, "termination", toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timeout"
                                      : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? "client_abort"
                                      : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? "shutdown"
                                      : "error");
    srv_log_emit(&j);
  }
  ctx_put(rc);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decoding of the path and query, in place. "%00" is left encoded: a decoded NUL would
 * silently cut a C string short (a name "a%00b" would be stored as "a"); left as is, the '%'
 * makes the router and the name validators refuse it. '+' is not turned into a space (paths
 * and our query values never use form encoding). */
size_t srv_http_unescape(char *s) {
  char *r = s, *w = s;
  while (*r) {
    int hi, lo;
    if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0 && (hi | lo) != 0) {
      *w++ = (char)(hi * 16 + lo);
      r += 3;
    } else {
      *w++ = *r++;
    }
  }
  *w = 0;
  return (size_t)(w - s);
}

static size_t unescape(void *cls, struct MHD_Connection *c, char *s) {
  (void)cls;
  (void)c;
  return srv_http_unescape(s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  char msg[512];
  (void)cls;
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
  srv_log_msg(SRV_LOG_WARN, "http", "%s", msg);
}

/* ------------------------------------------------------------- lifecycle ---- */
int srv_http_start(const srv_config *cfg, api_ctx *ctx, srv_http **out, uint16_t *port,
                   char *err, size_t errn) {
  char host[256];
  uint16_t want_port;
  struct addrinfo hints = {0}, *ai = NULL;
  struct sockaddr_storage ss;
  *out = NULL;
  if (srv_listen_split(cfg->listen, host, sizeof host, &want_port) != 0) {
    snprintf(err, errn, "--listen '%s' is not HOST:PORT", cfg->listen);
    return MOPT_EINVAL;
  }
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_ADDRCONFIG;
  int gai = getaddrinfo(host, NULL, &hints, &ai);
  if (gai != 0 || !ai) {
    snprintf(err, errn, "--listen '%s': cannot resolve '%s': %s", cfg->listen, host,
             gai_strerror(gai));
    return MOPT_EINVAL;
  }
  memset(&ss, 0, sizeof ss);
  memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
  int v6 = ai->ai_family == AF_INET6;
  freeaddrinfo(ai);
  if (v6) ((struct sockaddr_in6 *)&ss)->sin6_port = htons(want_port);
  else ((struct sockaddr_in *)&ss)->sin_port = htons(want_port);

  /* Leave file descriptors for SQLite, blobs being served, worker pipes and logs. */
  struct rlimit rl;
  unsigned conn_limit = cfg->conn_limit;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    rlim_t reserve = 64 + (rlim_t)cfg->workers * 8 + (rlim_t)cfg->threads * 8;
    rlim_t avail = rl.rlim_cur > reserve * 2 ? rl.rlim_cur - reserve : rl.rlim_cur / 2;
    if (conn_limit > avail) {
      srv_log_msg(cfg->conn_limit == 20000 ? SRV_LOG_INFO : SRV_LOG_WARN, "config",
                  "conn_limit %u lowered to %llu to fit the open-files limit %llu", conn_limit,
                  (unsigned long long)avail, (unsigned long long)rl.rlim_cur);
      conn_limit = (unsigned)avail;
    }
  }

  pthread_once(&free_once, free_key_init);
  srv_http *h = calloc(1, sizeof *h);
  if (!h) return MOPT_ENOMEM;
  h->ctx = ctx;
  h->cfg = cfg;
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                   MHD_USE_TURBO;
  if (v6) flags |= MHD_USE_IPv6;
  h->d = MHD_start_daemon(
      flags, want_port, NULL, NULL, on_request, h,
      MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
      MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(cfg->threads ? cfg->threads : 1),
      MHD_OPTION_CONNECTION_LIMIT, conn_limit,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->per_ip_limit,
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->conn_timeout_s,
      MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)4096,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(16 * 1024),
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
      MHD_OPTION_UNESCAPE_CALLBACK, unescape, h,
      MHD_OPTION_END);
  if (!h->d) {
    snprintf(err, errn, "cannot listen on %s: %s", cfg->listen,
             errno ? strerror(errno) : "libmicrohttpd refused the options");
    free(h);
    return MOPT_EIO;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
  *port = di ? di->port : want_port;
  *out = h;
  return 0;
}

void srv_http_quiesce(srv_http *h) {
  if (!h || atomic_exchange(&h->quiescing, 1)) return;
  MHD_socket fd = MHD_quiesce_daemon(h->d);
  if (fd != MHD_INVALID_SOCKET) close(fd);
  srv_waiters_expire(-1);   /* answer every long-poll now */
}

int64_t srv_http_drain(srv_http *h, int64_t timeout_ms) {
  int64_t end = srv_mono_us() + timeout_ms * 1000;
  (void)h;
  for (;;) {
    srv_waiters_expire(-1);
    int64_t n = srv_metrics_inflight_get();
    if (n <= 0 || srv_mono_us() >= end) return n < 0 ? 0 : n;
    usleep(10000);
  }
}

void srv_http_stop(srv_http *h) {
  if (!h) return;
  srv_waiters_expire(-1);
  MHD_stop_daemon(h->d);
  free(h);
}
