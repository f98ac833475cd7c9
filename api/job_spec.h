/* job_spec.h — parse and validate an optimization job spec (JSON, DESIGN.md "Job spec").
 *
 * Shared by the daemon (POST /v1/jobs validates before accepting) and the `mopt` CLI/worker
 * (which runs the normalized spec it is given), so both agree on one meaning of a spec.
 * Depends on jansson and core/mopt.h only.
 */
#ifndef JOB_SPEC_H
#define JOB_SPEC_H

#include <stddef.h>

#include "mopt.h"

/* Parses text (len bytes, need not be NUL-terminated) into *spec (mopt_spec_init'ed here).
 * Validation is complete: unknown keys, wrong types, out-of-range values and unknown ops are
 * refused with MOPT_EJSON (syntax; diag->where = "line L column C") or MOPT_ESPEC
 * (diag->where = JSON pointer such as "/passes/1/sparsity", diag->msg says why).
 * JSON nesting deeper than 64 is refused without recursion.
 * require_model: 1 when "model" ("sha256:<64 hex>") must be present (the API), 0 for CLI specs.
 * model_out (may be NULL) receives a malloc'd copy of "model" or NULL.
 * normalized (may be NULL) receives malloc'd canonical JSON: every default filled in, keys
 * sorted, no whitespace, "model" excluded — the job key hashes it. */
int api_spec_parse(const char *text, size_t len, int require_model, mopt_spec *spec,
                   char **model_out, char **normalized, mopt_diag *diag);

/* The canonical JSON of a parsed spec (as api_spec_parse's normalized), malloc'd, NULL on
 * ENOMEM. The API uses it after rewriting a pass's "anchor" (a release resolved to its model
 * id) so the job key covers the model the anchor meant at submission time. */
char *api_spec_normalize(const mopt_spec *spec);

#endif
