/* sb.h — a growable text buffer for the JSON and Prometheus text moptd writes by hand: the
 * core's report, and in api/ the job JSON, the canonical job spec and /metrics.
 * Allocation failure is sticky: the buffer records it in oom and ignores further appends, so
 * writers check once at the end. buf is NUL-terminated once anything was appended; the caller
 * frees (or takes) it. Not thread-safe; one buffer per writer.
 */
#ifndef MOPT_SB_H
#define MOPT_SB_H

#include <stddef.h>

typedef struct mopt_sb { char *buf; size_t len, cap; int oom; } mopt_sb;
/* Appends n bytes of p. */
void mopt_sb_add(mopt_sb *s, const char *p, size_t n);
void mopt_sb_puts(mopt_sb *s, const char *str);
void mopt_sb_printf(mopt_sb *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes str as a JSON string literal (quotes, escapes, control characters and DEL as \u00XX,
 * invalid UTF-8 as \ufffd); NULL → null. */
void mopt_sb_json_str(mopt_sb *s, const char *str);
/* Writes a JSON number, or null when not finite. */
void mopt_sb_json_num(mopt_sb *s, double v);

#endif
