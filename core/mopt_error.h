/* mopt_error.h — the one error table of moptd.
 *
 * Every error a user can see comes from this table: the enum, mopt_strerror(), the stable
 * machine-readable code string and the HTTP status are all generated from MOPT_ERROR_MAP.
 * Values are explicit and never renumbered: they reach logs, the wire and job rows.
 * 0 is success; every error is negative.
 *
 * mopt_diag carries the human part: what was wrong and where (tensor name, byte offset,
 * JSON pointer). Functions that can fail on user input take a mopt_diag * (may be NULL).
 */
#ifndef MOPT_ERROR_H
#define MOPT_ERROR_H

#include <stddef.h>
#include <stdint.h>

/*        NAME            value  http  code string          message */
#define MOPT_ERROR_MAP(X) \
  X(MOPT_ENOMEM,           -1,  500, "out_of_memory",     "out of memory") \
  X(MOPT_EIO,              -2,  500, "io_error",          "input/output error") \
  X(MOPT_EINVAL,           -3,  400, "invalid_argument",  "invalid argument") \
  X(MOPT_EPARSE,           -4,  422, "invalid_model",     "model is not a valid ONNX protobuf") \
  X(MOPT_EMODEL,           -5,  422, "invalid_model",     "model is structurally invalid") \
  X(MOPT_ELIMIT,           -6,  413, "too_large",         "a size limit was exceeded") \
  X(MOPT_EUNSUPPORTED,     -7,  422, "unsupported",       "not supported") \
  X(MOPT_ENOTFOUND,        -8,  404, "not_found",         "not found") \
  X(MOPT_ECONFLICT,        -9,  409, "conflict",          "conflicts with the current state") \
  X(MOPT_EAUTH,           -10,  401, "unauthorized",      "missing or invalid bearer token") \
  X(MOPT_EFORBIDDEN,      -11,  403, "forbidden",         "token lacks the required scope") \
  X(MOPT_EBUSY,           -12,  429, "busy",              "queue is full, retry later") \
  X(MOPT_ECANCELLED,      -13,  409, "cancelled",         "operation was cancelled") \
  X(MOPT_EDIGEST,         -14,  400, "digest_mismatch",   "content digest does not match") \
  X(MOPT_ERANGE,          -15,  416, "range_not_satisfiable", "requested range not satisfiable") \
  X(MOPT_EMETHOD,         -16,  405, "method_not_allowed","method not allowed") \
  X(MOPT_ESPEC,           -17,  400, "invalid_spec",      "invalid job spec") \
  X(MOPT_EJSON,           -18,  400, "malformed_json",    "malformed JSON") \
  X(MOPT_ETIMEOUT,        -19,  504, "timeout",           "time limit exceeded") \
  X(MOPT_EWORKER,         -20,  500, "worker_failed",     "optimization worker failed") \
  X(MOPT_EINTERNAL,       -21,  500, "internal",          "internal error") \
  X(MOPT_EUNAVAILABLE,    -22,  503, "unavailable",       "service is shutting down or not ready") \
  X(MOPT_EBADREQ,         -23,  400, "bad_request",       "bad request") \
  X(MOPT_ELENGTH,         -24,  411, "length_required",   "Content-Length required") \
  X(MOPT_EMEDIA,          -25,  415, "unsupported_media_type", "unsupported media type") \
  X(MOPT_EPRECONDITION,   -26,  412, "precondition_failed", "precondition failed") \
  X(MOPT_EPAYLOAD,        -27,  422, "invalid_payload",   "OTA payload is malformed or corrupted") \
  X(MOPT_ESIGNATURE,      -28,  422, "bad_signature",     "signature verification failed")

typedef enum {
  MOPT_OK = 0,
#define MOPT_X_ENUM(name, val, http, code, msg) name = (val),
  MOPT_ERROR_MAP(MOPT_X_ENUM)
#undef MOPT_X_ENUM
} mopt_err;

/* Static message for an error value ("unknown error" for values not in the table). */
const char *mopt_strerror(int err);
/* Stable snake_case code for the JSON error shape ("internal" for unknown values). */
const char *mopt_errcode(int err);
/* HTTP status for an error value (200 for MOPT_OK, 500 for unknown values). */
int mopt_errhttp(int err);

/* What went wrong and where; filled by functions that fail on user input. */
typedef struct mopt_diag {
  char msg[512];   /* human sentence, e.g. "raw_data holds 12 bytes, shape [4,4] float needs 64" */
  char where[256]; /* location: tensor name, byte offset, JSON pointer ("/passes/0/sparsity") */
} mopt_diag;

/* Formats msg (printf-style) and where into d, returns err. d may be NULL. Thread-safe. */
int mopt_diag_set(mopt_diag *d, int err, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
