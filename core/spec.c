/* spec.c — mopt_spec defaults and cleanup (the C form of a job spec; parsing lives in api/).
 * Trade-off: the struct is fixed-size (MOPT_MAX_PASSES, MOPT_MAX_GLOBS) so specs copy and compare
 * as plain data; only the glob strings are owned heap memory. */
#include <stdlib.h>
#include <string.h>

#include "mopt.h"

void mopt_spec_init(mopt_spec *s) {
  memset(s, 0, sizeof *s);
  s->min_elements = 1024;
  s->seed = 0;
}

void mopt_spec_free(mopt_spec *s) {
  if (!s) return;
  for (size_t i = 0; i < s->n_include && i < MOPT_MAX_GLOBS; i++) free(s->include[i]);
  for (size_t i = 0; i < s->n_exclude && i < MOPT_MAX_GLOBS; i++) free(s->exclude[i]);
  s->n_include = s->n_exclude = 0;
}
