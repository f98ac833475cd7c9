/* textbuf.c — see textbuf.h. Doubling growth; JSON escaping per RFC 8259. Invalid UTF-8 in a
 * string is written as U+FFFD so the output is always valid JSON. */
#include "textbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void api_tb_add(api_tb *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) { b->oom = 1; return; }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

void api_tb_str(api_tb *b, const char *s) { api_tb_add(b, s, strlen(s)); }

void api_tb_fmt(api_tb *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (k < 0) return;
  if ((size_t)k < sizeof tmp) { api_tb_add(b, tmp, (size_t)k); return; }
  char *big = malloc((size_t)k + 1);
  if (!big) { b->oom = 1; return; }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)k + 1, fmt, ap);
  va_end(ap);
  api_tb_add(b, big, (size_t)k);
  free(big);
}

void api_tb_json_str(api_tb *b, const char *s) {
  api_tb_add(b, "\"", 1);
  const char *run = s;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    const char *esc = NULL;
    char u[8];
    switch (c) {
    case '"': esc = "\\\""; break;
    case '\\': esc = "\\\\"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\t': esc = "\\t"; break;
    case '\b': esc = "\\b"; break;
    case '\f': esc = "\\f"; break;
    default:
      if (c < 0x20) { snprintf(u, sizeof u, "\\u%04x", c); esc = u; }
    }
    if (!esc && c >= 0x80) {
      size_t need = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 0;
      size_t k = 0;
      while (need && k < need && ((unsigned char)s[k + 1] & 0xC0) == 0x80) k++;
      if (need && k == need && c >= 0xC2 && c <= 0xF4) { s += need; continue; }
      esc = "\\ufffd";
    }
    if (!esc) continue;
    api_tb_add(b, run, (size_t)(s - run));
    api_tb_str(b, esc);
    run = s + 1;
  }
  api_tb_add(b, run, (size_t)(s - run));
  api_tb_add(b, "\"", 1);
}
