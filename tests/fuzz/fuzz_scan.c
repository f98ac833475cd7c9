/* fuzz_scan.c — libFuzzer target for the streaming upload validator (core/scan.c), the first
 * code every uploaded byte meets in the daemon.
 *
 * For every input: scan it from memory with small limits; any crash, sanitizer report or hang is
 * a finding. Invariants: an accepted model has a positive IR version and a graph, every tensor
 * reported by the callback lies inside the input, and a rejection always carries a message.
 * Trade-off: limits are small (1M elements per tensor) so each run stays fast.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mopt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_scan invariant violated: %s\n", what);
    abort();
  }
}

static size_t g_size;

static int on_tensor(const mopt_scan_tensor *t, void *ctx) {
  (void)ctx;
  check(t->name != NULL, "tensor name");
  check(t->msg_offset <= g_size && t->msg_length <= g_size - t->msg_offset, "message range");
  check(t->raw_offset <= g_size && t->raw_length <= g_size - t->raw_offset, "raw range");
  check(t->ndim >= 0 && t->ndim <= 64, "ndim");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mopt_load_limits lim;
  memset(&lim, 0, sizeof lim);
  lim.max_tensor_elems = 1u << 20;
  lim.max_total_bytes = 64u << 20;
  lim.max_graph_depth = 8;
  mopt_model_info info;
  mopt_diag d;
  memset(&d, 0, sizeof d);
  g_size = size;
  int rc = mopt_model_scan_tensors(data, size, &lim, on_tensor, NULL, &info, &d);
  if (rc == 0) check(info.ir_version > 0, "accepted without ir_version");
  else check(rc < 0 && d.msg[0] != 0, "rejection without a message");
  return 0;
}
