/* main.c — entry of `mopt`: dispatches subcommands (inspect, optimize, worker), --version, help,
 * and the helpers they share (file I/O, exit codes, spec loading).
 *
 * Trade-off: plain hand-written argv parsing per subcommand (no getopt_long tables) keeps each
 * subcommand's flags next to the code that uses them; usage errors always exit 2.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "job_spec.h"
#include "ota.h"

int cli_exit_code(int err) {
  switch (err) {
  case MOPT_OK: return CLI_OK;
  case MOPT_EPARSE: case MOPT_EMODEL: case MOPT_ELIMIT: case MOPT_EUNSUPPORTED:
  case MOPT_ESPEC: case MOPT_EJSON: case MOPT_EINVAL: case MOPT_ENOTFOUND:
    return CLI_BAD_INPUT;
  default: return CLI_INTERNAL;
  }
}

int cli_read_file(const char *path, char **out, size_t *len, mopt_diag *diag) {
  *out = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return mopt_diag_set(diag, errno == ENOENT ? MOPT_ENOTFOUND : MOPT_EIO, path,
                               "cannot open: %s", strerror(errno));
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (n + 1 >= cap) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) { free(buf); buf = NULL; break; }
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (!buf) return mopt_diag_set(diag, MOPT_ENOMEM, path, "out of memory reading file");
  if (err) { free(buf); return mopt_diag_set(diag, MOPT_EIO, path, "read error"); }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return 0;
}

int cli_write_file_atomic(const char *path, const char *data, size_t len, mopt_diag *diag) {
  size_t pl = strlen(path);
  char *tmp = malloc(pl + 16);
  if (!tmp) return MOPT_ENOMEM;
  snprintf(tmp, pl + 16, "%s.tmpXXXXXX", path);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    int rc = mopt_diag_set(diag, MOPT_EIO, path, "cannot create temp file: %s", strerror(errno));
    free(tmp);
    return rc;
  }
  size_t off = 0;
  while (off < len) {
    ssize_t w = write(fd, data + off, len - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      break;
    }
    off += (size_t)w;
  }
  int ok = off == len && fchmod(fd, 0644) == 0 && fsync(fd) == 0;
  ok = close(fd) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) {
    int rc = mopt_diag_set(diag, MOPT_EIO, path, "cannot write: %s", strerror(errno));
    unlink(tmp);
    free(tmp);
    return rc;
  }
  char *dcopy = strdup(path);
  if (dcopy) {
    int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) { fsync(dfd); close(dfd); }
    free(dcopy);
  }
  free(tmp);
  return 0;
}

int cli_load_spec(const char *path, mopt_spec *spec, mopt_diag *diag) {
  char *text = NULL;
  size_t len = 0;
  int rc = cli_read_file(path, &text, &len, diag);
  if (rc) return rc == MOPT_ENOTFOUND ? MOPT_ESPEC : rc;
  rc = api_spec_parse(text, len, 0, spec, NULL, NULL, diag);
  free(text);
  return rc;
}

static void usage(FILE *f) {
  fprintf(f,
    "mopt %s — offline model optimization (moptd's compression core)\n"
    "\n"
    "usage:\n"
    "  mopt inspect MODEL [--json]\n"
    "      tensors (name, location, consumer, shape, dtype, bytes), ops by count, opsets\n"
    "  mopt optimize IN -o OUT [--spec SPEC.json] [--report REPORT.json]\n"
    "               [--quantize int8|uint8|int4|uint4] [--per-channel] [--block N]\n"
    "               [--affine|--symmetric] [--mse]\n"
    "               [--prune S] [--pattern unstructured|N:M|block:RxC|channel] [--global]\n"
    "               [--cluster K] [--cluster-init kmeans++|linear|density|random]\n"
    "               [--cluster-per-channel] [--cluster-dense]\n"
    "               [--fp16] [--decompose E | --rank R]\n"
    "               [--include GLOB]... [--exclude GLOB]... [--min-elements N] [--seed N]\n"
    "               [--anchor OLD_OUTPUT.onnx]  (prune/cluster/quantize reuse its mask/\n"
    "               centroids/scales where the error bound holds: smaller OTA deltas)\n"
    "      flags build a spec (order: decompose, prune, cluster, quantize, fp16); --spec and\n"
    "      pass flags are exclusive. Progress bar on a terminal, quiet otherwise.\n"
    "  mopt worker --input IN --spec SPEC.json --output OUT --report REPORT.json\n"
    "              [--max-memory-mb N] [--max-cpu-s N]\n"
    "      the job entry moptd spawns: JSON lines on stdout (progress, done, error)\n"
    "  mopt pack MODEL -o PAYLOAD | unpack PAYLOAD -o MODEL | payload-info PAYLOAD\n"
    "  mopt delta OLD NEW -o PAYLOAD | apply OLD PAYLOAD -o NEW\n"
    "  mopt verify-manifest MANIFEST --key KEYFILE   (exit 0 only when the signature verifies)\n"
    "  mopt --version | help\n"
    "\n"
    "exit codes: 0 ok, 1 bad input (model or spec), 2 usage, 3 internal error or cancelled\n",
    MOPT_VERSION);
}

int main(int argc, char **argv) {
  if (argc < 2) { usage(stderr); return CLI_USAGE; }
  /* Tensor-sized buffers come and go once per weight; served from the heap and kept (instead of
   * fresh mmaps returned at every free) they are reused without page faults, which dominate
   * the optimizer's system time. Peak RSS is unchanged: freed memory is reused, not added. */
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
    printf("mopt %s\n", MOPT_VERSION);
    return CLI_OK;
  }
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    usage(stdout);
    return CLI_OK;
  }
  if (!strcmp(cmd, "inspect")) return cli_inspect(argc - 2, argv + 2);
  if (!strcmp(cmd, "optimize")) return cli_optimize(argc - 2, argv + 2);
  if (!strcmp(cmd, "worker")) return cli_worker(argc - 2, argv + 2);
  if (!strcmp(cmd, "pack")) return mopt_cli_pack(argc - 2, argv + 2);
  if (!strcmp(cmd, "unpack")) return mopt_cli_unpack(argc - 2, argv + 2);
  if (!strcmp(cmd, "delta")) return mopt_cli_delta(argc - 2, argv + 2);
  if (!strcmp(cmd, "apply")) return mopt_cli_apply(argc - 2, argv + 2);
  if (!strcmp(cmd, "payload-info")) return mopt_cli_payload_info(argc - 2, argv + 2);
  if (!strcmp(cmd, "verify-manifest")) return mopt_cli_verify_manifest(argc - 2, argv + 2);
  fprintf(stderr, "mopt: unknown command '%s'\n\n", cmd);
  usage(stderr);
  return CLI_USAGE;
}
