/* sb.c — the growable text buffer (sb.h): doubling growth, JSON string escaping per RFC 8259
 * with invalid UTF-8 written as U+FFFD so the output is always valid JSON. */
#include "sb.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sb_reserve(mopt_sb *s, size_t extra) {
  if (s->oom) return;
  if (s->len + extra + 1 <= s->cap) return;
  size_t nc = s->cap ? s->cap : 1024;
  while (nc < s->len + extra + 1) nc *= 2;
  char *nb = realloc(s->buf, nc);
  if (!nb) { s->oom = 1; return; }
  s->buf = nb;
  s->cap = nc;
}

void mopt_sb_add(mopt_sb *s, const char *p, size_t n) {
  sb_reserve(s, n);
  if (s->oom) return;
  memcpy(s->buf + s->len, p, n);
  s->len += n;
  s->buf[s->len] = 0;
}

void mopt_sb_puts(mopt_sb *s, const char *str) { mopt_sb_add(s, str, strlen(str)); }

void mopt_sb_printf(mopt_sb *s, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) { mopt_sb_puts(s, tmp); return; }
  sb_reserve(s, (size_t)n);
  if (s->oom) return;
  va_start(ap, fmt);
  vsnprintf(s->buf + s->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  s->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when the bytes there are not one. */
static int utf8_len(const unsigned char *p) {
  unsigned c = p[0];
  int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n <= 1) return n;
  for (int i = 1; i < n; i++)
    if ((p[i] & 0xc0) != 0x80) return 0;
  unsigned cp = n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
  for (int i = 1; i < n; i++) cp = (cp << 6) | (p[i] & 0x3f);
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;                                   /* overlong, out of range or a surrogate */
  return n;
}

void mopt_sb_json_str(mopt_sb *s, const char *str) {
  if (!str) { mopt_sb_puts(s, "null"); return; }
  sb_reserve(s, strlen(str) + 2);
  mopt_sb_puts(s, "\"");
  for (const unsigned char *p = (const unsigned char *)str; *p;) {
    char esc[8];
    switch (*p) {
    case '"': mopt_sb_puts(s, "\\\""); p++; continue;
    case '\\': mopt_sb_puts(s, "\\\\"); p++; continue;
    case '\n': mopt_sb_puts(s, "\\n"); p++; continue;
    case '\r': mopt_sb_puts(s, "\\r"); p++; continue;
    case '\t': mopt_sb_puts(s, "\\t"); p++; continue;
    case '\b': mopt_sb_puts(s, "\\b"); p++; continue;
    case '\f': mopt_sb_puts(s, "\\f"); p++; continue;
    default: break;
    }
    if (*p < 0x20 || *p == 0x7f) {
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      mopt_sb_puts(s, esc);
      p++;
      continue;
    }
    int n = utf8_len(p);
    if (n == 0) {                               /* names are untrusted bytes: keep JSON valid */
      mopt_sb_puts(s, "\\ufffd");
      p++;
      continue;
    }
    memcpy(esc, p, (size_t)n);
    esc[n] = 0;
    mopt_sb_puts(s, esc);
    p += n;
  }
  mopt_sb_puts(s, "\"");
}

void mopt_sb_json_num(mopt_sb *s, double v) {
  if (!isfinite(v)) { mopt_sb_puts(s, "null"); return; }
  if (v == floor(v) && fabs(v) < 9e15) mopt_sb_printf(s, "%.0f", v);
  else mopt_sb_printf(s, "%.6g", v);
}
