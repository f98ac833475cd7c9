/* textbuf.h — a growable text buffer for the JSON and Prometheus text moptd writes by hand.
 *
 * One implementation for every writer in api/ (job JSON, the canonical job spec, /metrics);
 * also linked into the mopt CLI with job_spec.c. Allocation failure is sticky: the buffer
 * records it in oom and ignores further appends, so writers check once at the end.
 * Not thread-safe; one buffer per writer.
 */
#ifndef TEXTBUF_H
#define TEXTBUF_H

#include <stddef.h>

typedef struct api_tb {
  char *p;        /* NUL-terminated text, malloc'd; caller frees (or takes) it */
  size_t len, cap;
  int oom;        /* 1 after an allocation failed */
} api_tb;

/* Appends n bytes of s. */
void api_tb_add(api_tb *b, const char *s, size_t n);
/* Appends a NUL-terminated string. */
void api_tb_str(api_tb *b, const char *s);
/* Appends printf-style text (any length). */
void api_tb_fmt(api_tb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal (quotes, escapes; control characters as \u00XX). */
void api_tb_json_str(api_tb *b, const char *s);

#endif
