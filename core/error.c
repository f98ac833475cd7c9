/* error.c — the functions generated from MOPT_ERROR_MAP (see mopt_error.h). */
#include "mopt_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *mopt_strerror(int err) {
  switch (err) {
  case MOPT_OK: return "success";
#define X(name, val, http, code, msg) case name: return msg;
  MOPT_ERROR_MAP(X)
#undef X
  default: return "unknown error";
  }
}

const char *mopt_errcode(int err) {
  switch (err) {
  case MOPT_OK: return "ok";
#define X(name, val, http, code, msg) case name: return code;
  MOPT_ERROR_MAP(X)
#undef X
  default: return "internal";
  }
}

int mopt_errhttp(int err) {
  switch (err) {
  case MOPT_OK: return 200;
#define X(name, val, http, code, msg) case name: return http;
  MOPT_ERROR_MAP(X)
#undef X
  default: return 500;
  }
}

int mopt_diag_set(mopt_diag *d, int err, const char *where, const char *fmt, ...) {
  if (!d) return err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->msg, sizeof d->msg, fmt, ap);
  va_end(ap);
  snprintf(d->where, sizeof d->where, "%s", where ? where : "");
  return err;
}
