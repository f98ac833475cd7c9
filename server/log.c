/* log.c — structured JSON log lines on stderr, and the small JSON/time helpers they need.
 *
 * Each line is built in a caller-supplied stack buffer and written with one write(2), so lines
 * from different threads never interleave and logging allocates nothing. Trade-off: a line
 * longer than its buffer is replaced by a short marker line rather than grown.
 */
#include "srv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = SRV_LOG_INFO;
static const char *const level_str[] = {"debug", "info", "warn", "error"};

void srv_log_set_level(int level) { atomic_store(&log_level, level); }
int srv_log_enabled(int level) { return level >= atomic_load_explicit(&log_level, memory_order_relaxed); }

int64_t srv_now_ms(void) { return api_now_ms(); }

int64_t srv_mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One time format for logs and JSON bodies: api's. */
void srv_time_rfc3339(int64_t unix_ms, char *buf, size_t n) { api_time_format(unix_ms, buf, n); }

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
  else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
  else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
  else return 0;
  if (len > n) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return len;
}

size_t srv_utf8_sanitize(char *s) {
  unsigned char *u = (unsigned char *)s;
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    size_t l = utf8_len(u + i, n - i);
    if (l == 0) {
      u[i++] = '?';
      continue;
    }
    i += l;
  }
  return n;
}

size_t srv_json_escape(const char *s, size_t n, char *out, size_t cap) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *u = (const unsigned char *)s;
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    unsigned c = u[i];
    char esc = 0;
    switch (c) {
    case '"': esc = '"'; break;
    case '\\': esc = '\\'; break;
    case '\n': esc = 'n'; break;
    case '\r': esc = 'r'; break;
    case '\t': esc = 't'; break;
    case '\b': esc = 'b'; break;
    case '\f': esc = 'f'; break;
    default: break;
    }
    if (esc) {
      if (o + 2 >= cap) return (size_t)-1;
      out[o++] = '\\';
      out[o++] = esc;
      i++;
      continue;
    }
    size_t l = c < 0x20 ? 0 : utf8_len(u + i, n - i);
    if (l == 0) {   /* control or invalid byte: \u00XX */
      if (o + 6 >= cap) return (size_t)-1;
      memcpy(out + o, "\\u00", 4);
      out[o + 4] = hex[c >> 4];
      out[o + 5] = hex[c & 15];
      o += 6;
      i++;
      continue;
    }
    if (o + l >= cap) return (size_t)-1;
    memcpy(out + o, s + i, l);
    o += l;
    i += l;
  }
  if (o >= cap) return (size_t)-1;
  out[o] = 0;
  return o;
}

void srv_jbuf_init(srv_jbuf *j, char *buf, size_t cap) {
  j->buf = buf;
  j->cap = cap;
  j->len = 0;
  j->first = 1;
  j->overflow = cap < 4;
  if (!j->overflow) buf[j->len++] = '{';
}

static void put(srv_jbuf *j, const char *s, size_t n) {
  if (j->overflow) return;
  if (j->len + n + 3 > j->cap) {   /* keep room for "}\n\0" */
    j->overflow = 1;
    return;
  }
  memcpy(j->buf + j->len, s, n);
  j->len += n;
}

static void key(srv_jbuf *j, const char *k) {
  if (!j->first) put(j, ",", 1);
  j->first = 0;
  put(j, "\"", 1);
  put(j, k, strlen(k));
  put(j, "\":", 2);
}

void srv_jbuf_strn(srv_jbuf *j, const char *k, const char *val, size_t n) {
  key(j, k);
  if (!val) {
    put(j, "null", 4);
    return;
  }
  put(j, "\"", 1);
  if (j->overflow) return;
  size_t room = j->cap - j->len;
  size_t w = room > 3 ? srv_json_escape(val, n, j->buf + j->len, room - 3) : (size_t)-1;
  if (w == (size_t)-1) {
    j->overflow = 1;
    return;
  }
  j->len += w;
  put(j, "\"", 1);
}

void srv_jbuf_str(srv_jbuf *j, const char *k, const char *val) {
  srv_jbuf_strn(j, k, val, val ? strlen(val) : 0);
}

void srv_jbuf_int(srv_jbuf *j, const char *k, int64_t v) {
  char tmp[32];
  int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
  key(j, k);
  put(j, tmp, (size_t)n);
}

void srv_jbuf_num(srv_jbuf *j, const char *k, double v) {
  char tmp[48];
  int n = snprintf(tmp, sizeof tmp, "%.3f", v);
  key(j, k);
  if (v != v || v > 1e300 || v < -1e300) put(j, "null", 4);
  else put(j, tmp, (size_t)n);
}

void srv_jbuf_raw(srv_jbuf *j, const char *k, const char *json) {
  key(j, k);
  if (!json) put(j, "null", 4);
  else put(j, json, strlen(json));
}

size_t srv_jbuf_end(srv_jbuf *j) {
  if (j->overflow) return 0;
  j->buf[j->len++] = '}';
  j->buf[j->len++] = '\n';
  j->buf[j->len] = 0;
  return j->len;
}

void srv_log_begin(srv_jbuf *j, char *buf, size_t cap, int level, const char *event) {
  char ts[32];
  srv_jbuf_init(j, buf, cap);
  srv_time_rfc3339(srv_now_ms(), ts, sizeof ts);
  srv_jbuf_str(j, "ts", ts);
  srv_jbuf_str(j, "level", level_str[level < 0 ? 0 : level > 3 ? 3 : level]);
  if (event) srv_jbuf_str(j, "event", event);
}

static void write_all(const char *p, size_t n) {
  while (n) {
    ssize_t w = write(2, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += w;
    n -= (size_t)w;
  }
}

void srv_log_emit(srv_jbuf *j) {
  size_t n = srv_jbuf_end(j);
  if (n == 0) {
    static const char marker[] = "{\"level\":\"warn\",\"event\":\"log_line_too_long\"}\n";
    write_all(marker, sizeof marker - 1);
    return;
  }
  write_all(j->buf, n);
}

void srv_log_msg(int level, const char *event, const char *fmt, ...) {
  if (!srv_log_enabled(level)) return;
  char msg[1024], buf[2048];
  srv_jbuf j;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  srv_log_begin(&j, buf, sizeof buf, level, event);
  srv_jbuf_str(&j, "message", msg);
  srv_log_emit(&j);
}

int srv_request_id_ok(const char *s) {
  size_t n = 0;
  if (!s) return 0;
  for (; s[n]; n++) {
    char c = s[n];
    if (n >= 64) return 0;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return n > 0;
}

void srv_request_id(char out[17]) {
  /* 24 bits of per-process random prefix (set once) + 40-bit counter: unique in the process,
   * cheap (one atomic add), and different across restarts. */
  static atomic_uint_fast64_t counter;
  static atomic_uint_fast64_t prefix;
  uint64_t p = atomic_load_explicit(&prefix, memory_order_relaxed);
  if (p == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
    seed ^= seed >> 33;
    seed *= 0xff51afd7ed558ccdull;
    seed ^= seed >> 33;
    p = (seed & 0xffffffull) | (1ull << 24);   /* never 0 */
    uint_fast64_t expected = 0;
    if (!atomic_compare_exchange_strong(&prefix, &expected, p)) p = expected;
  }
  uint64_t c = atomic_fetch_add_explicit(&counter, 1, memory_order_relaxed);
  uint64_t v = ((p & 0xffffffull) << 40) | (c & 0xffffffffffull);
  static const char hex[] = "0123456789abcdef";
  for (int i = 15; i >= 0; i--) {
    out[i] = hex[v & 15];
    v >>= 4;
  }
  out[16] = 0;
}
