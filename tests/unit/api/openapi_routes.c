/* openapi_routes.c — the route table and openapi.yaml list the same (method, path) pairs,
 * checked both ways (HEAD excluded: it is served by GET rows and not listed in the spec).
 *
 * The file is read with a small line scanner rather than a YAML library: it relies on the
 * layout openapi.yaml keeps (paths under a top-level "paths:" key, each path at two spaces,
 * each operation at four), and fails loudly when it finds no paths at all, so a layout change
 * cannot make the test pass vacuously. openapi.yaml comes from $MOPT_ROOT or ./openapi.yaml.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api.h"

#define MAX_OPS 128

typedef struct op { char method[16]; char path[128]; } op;
static op ops[MAX_OPS];
static size_t n_ops;

static const char *const http_methods[] = {"get", "put", "post", "delete", "options", "head",
                                           "patch", "trace"};

static int load_spec(void **state) {
  (void)state;
  const char *root = getenv("MOPT_ROOT");
  char path[1024];
  snprintf(path, sizeof path, "%s/openapi.yaml", root && *root ? root : ".");
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return -1;
  }
  char line[1024], cur[128] = "";
  int in_paths = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (line[0] && line[0] != ' ' && line[0] != '#') {
      in_paths = strcmp(line, "paths:") == 0;
      cur[0] = 0;
      continue;
    }
    if (!in_paths) continue;
    if (strncmp(line, "  /", 3) == 0) {
      size_t n = strlen(line);
      if (line[n - 1] != ':') continue;
      snprintf(cur, sizeof cur, "%.*s", (int)(n - 3), line + 2);
      continue;
    }
    if (cur[0] && strncmp(line, "    ", 4) == 0 && line[4] != ' ') {
      for (size_t i = 0; i < sizeof http_methods / sizeof http_methods[0]; i++) {
        size_t ml = strlen(http_methods[i]);
        if (strncmp(line + 4, http_methods[i], ml) == 0 && line[4 + ml] == ':' &&
            n_ops < MAX_OPS) {
          snprintf(ops[n_ops].method, sizeof ops[n_ops].method, "%s", http_methods[i]);
          snprintf(ops[n_ops].path, sizeof ops[n_ops].path, "%s", cur);
          n_ops++;
        }
      }
    }
  }
  fclose(f);
  return 0;
}

static void lower(const char *in, char *out, size_t n) {
  size_t i = 0;
  for (; in[i] && i + 1 < n; i++) out[i] = (char)(in[i] >= 'A' && in[i] <= 'Z' ? in[i] + 32 : in[i]);
  out[i] = 0;
}

static void test_spec_has_paths(void **state) {
  (void)state;
  /* Guard against a vacuous pass if the scanner stops understanding the file. */
  assert_true(n_ops >= 10);
}

static void test_every_route_in_spec(void **state) {
  (void)state;
  int missing = 0;
  for (size_t i = 0; i < api_routes_count; i++) {
    char m[16];
    lower(api_method_name(api_routes[i].method), m, sizeof m);
    int found = 0;
    for (size_t k = 0; k < n_ops; k++)
      if (strcmp(ops[k].method, m) == 0 && strcmp(ops[k].path, api_routes[i].pattern) == 0)
        found = 1;
    if (!found) {
      fprintf(stderr, "route %s %s is not in openapi.yaml\n", m, api_routes[i].pattern);
      missing++;
    }
  }
  assert_int_equal(missing, 0);
}

static void test_every_spec_op_routed(void **state) {
  (void)state;
  int missing = 0;
  for (size_t k = 0; k < n_ops; k++) {
    if (strcmp(ops[k].method, "head") == 0) continue;
    int found = 0;
    for (size_t i = 0; i < api_routes_count; i++) {
      char m[16];
      lower(api_method_name(api_routes[i].method), m, sizeof m);
      if (strcmp(ops[k].method, m) == 0 && strcmp(ops[k].path, api_routes[i].pattern) == 0)
        found = 1;
    }
    if (!found) {
      fprintf(stderr, "openapi.yaml lists %s %s but no route serves it\n", ops[k].method,
              ops[k].path);
      missing++;
    }
  }
  assert_int_equal(missing, 0);
}

static void test_counts_agree(void **state) {
  (void)state;
  size_t non_head = 0;
  for (size_t k = 0; k < n_ops; k++)
    if (strcmp(ops[k].method, "head") != 0) non_head++;
  assert_int_equal(non_head, api_routes_count);
}

/* Every code of the error table (core/mopt_error.h) is listed in openapi.yaml as a line
 * "- <code>" (the Error schema's enum), so clients can rely on the documented set. */
static void test_error_codes_documented(void **state) {
  (void)state;
  const char *root = getenv("MOPT_ROOT");
  char path[1024];
  snprintf(path, sizeof path, "%s/openapi.yaml", root && *root ? root : ".");
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  static char text[1 << 20];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = 0;
#define X(name, val, http, code, msg)                                        \
  {                                                                          \
    char want[96];                                                           \
    snprintf(want, sizeof want, "- %s\n", code);                             \
    if (!strstr(text, want)) fail_msg("error code %s is not in openapi.yaml", code); \
  }
  MOPT_ERROR_MAP(X)
#undef X
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_error_codes_documented),
    cmocka_unit_test(test_spec_has_paths),
    cmocka_unit_test(test_every_route_in_spec),
    cmocka_unit_test(test_every_spec_op_routed),
    cmocka_unit_test(test_counts_agree),
  };
  return cmocka_run_group_tests(tests, load_spec, NULL);
}
