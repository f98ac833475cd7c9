/* ota.c — the device-side and bench-side OTA commands of `mopt`: pack / unpack / delta / apply
 * payloads (core/payload.c) and verify a signed manifest (core/manifest.c).
 *
 * Trade-off: thin wrappers with their own flag parsing and exit-code mapping (payload and
 * signature errors are bad input = 1, not internal) so scripts on a device can branch on the
 * exit code alone; details go to stderr, one JSON summary line to stdout with --json.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "ota.h"
#include "payload.h"

static int exit_for(int err) {
  switch (err) {
  case MOPT_OK: return CLI_OK;
  case MOPT_EPAYLOAD: case MOPT_EDIGEST: case MOPT_ESIGNATURE: case MOPT_EJSON: case MOPT_EINVAL:
  case MOPT_ENOTFOUND: case MOPT_EPARSE: case MOPT_EMODEL:
    return CLI_BAD_INPUT;
  default: return CLI_INTERNAL;
  }
}

static int fail(const char *cmd, int err, const mopt_diag *d) {
  fprintf(stderr, "mopt %s: %s", cmd, d->msg[0] ? d->msg : mopt_strerror(err));
  if (d->where[0]) fprintf(stderr, " (at %s)", d->where);
  fprintf(stderr, " [%s]\n", mopt_errcode(err));
  return exit_for(err);
}

/* Positional args and flags: -o OUT, --level N, --chunk-kib N, --opaque, --json, --key FILE. */
typedef struct args {
  const char *pos[3];
  int npos;
  const char *out, *key;
  mopt_payload_opts o;
  int json;
} args;

static int parse(const char *cmd, int argc, char **argv, int want_pos, args *a) {
  memset(a, 0, sizeof *a);
  for (int i = 0; i < argc; i++) {
    const char *s = argv[i];
    if ((!strcmp(s, "-o") || !strcmp(s, "--output")) && i + 1 < argc) a->out = argv[++i];
    else if (!strcmp(s, "--key") && i + 1 < argc) a->key = argv[++i];
    else if (!strcmp(s, "--level") && i + 1 < argc) a->o.level = atoi(argv[++i]);
    else if (!strcmp(s, "--chunk-kib") && i + 1 < argc) a->o.chunk_bytes = (uint32_t)atoi(argv[++i]) * 1024u;
    else if (!strcmp(s, "--opaque")) a->o.opaque = 1;
    else if (!strcmp(s, "--json")) a->json = 1;
    else if (s[0] == '-' && s[1]) { fprintf(stderr, "mopt %s: unknown or incomplete option '%s'\n", cmd, s); return -1; }
    else if (a->npos < 3) a->pos[a->npos++] = s;
    else { fprintf(stderr, "mopt %s: too many arguments\n", cmd); return -1; }
  }
  if (a->npos != want_pos) { fprintf(stderr, "mopt %s: expected %d file argument(s)\n", cmd, want_pos); return -1; }
  return 0;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void summary(const char *cmd, const mopt_payload_info *in, double secs, int json) {
  if (json) {
    printf("{\"command\":\"%s\",\"kind\":\"%s\",\"payload_size\":%llu,\"target_size\":%llu,"
           "\"target_sha256\":\"%s\",\"base_size\":%llu,\"base_sha256\":\"%s\",\"records\":%llu,"
           "\"skeleton_len\":%llu,\"skeleton_comp_len\":%llu,\"skeleton_prefixed\":%s,"
           "\"tensors\":%llu,\"matched\":%llu,\"bytes_same\":%llu,\"bytes_raw\":%llu,"
           "\"bytes_xor\":%llu,\"bytes_sub\":%llu,\"bytes_sube\":%llu,\"seconds\":%.3f}\n",
           cmd, in->kind == MOPT_PAYLOAD_DELTA ? "delta" : "full",
           (unsigned long long)in->payload_size, (unsigned long long)in->target_size,
           in->target_sha256, (unsigned long long)in->base_size, in->base_sha256,
           (unsigned long long)in->n_records, (unsigned long long)in->skeleton_len,
           (unsigned long long)in->skeleton_comp_len, in->skeleton_prefixed ? "true" : "false",
           (unsigned long long)in->n_tensors, (unsigned long long)in->n_matched,
           (unsigned long long)in->bytes_same, (unsigned long long)in->bytes_raw,
           (unsigned long long)in->bytes_xor, (unsigned long long)in->bytes_sub,
           (unsigned long long)in->bytes_sube, secs);
  } else {
    fprintf(stderr, "%s: %s payload %llu bytes, target %llu bytes sha256:%s (%.2f s)\n", cmd,
            in->kind == MOPT_PAYLOAD_DELTA ? "delta" : "full",
            (unsigned long long)in->payload_size, (unsigned long long)in->target_size,
            in->target_sha256, secs);
  }
}

int mopt_cli_pack(int argc, char **argv) {
  args a;
  if (parse("pack", argc, argv, 1, &a) || !a.out) {
    fprintf(stderr, "usage: mopt pack MODEL -o PAYLOAD [--level N] [--chunk-kib N] [--opaque] [--json]\n");
    return CLI_USAGE;
  }
  mopt_diag d;
  mopt_payload_info in;
  double t0 = now_s();
  int rc = mopt_payload_pack_file(a.pos[0], a.out, &a.o, &in, &d);
  if (rc) return fail("pack", rc, &d);
  summary("pack", &in, now_s() - t0, a.json);
  return CLI_OK;
}

int mopt_cli_delta(int argc, char **argv) {
  args a;
  if (parse("delta", argc, argv, 2, &a) || !a.out) {
    fprintf(stderr, "usage: mopt delta OLD NEW -o PAYLOAD [--level N] [--chunk-kib N] [--opaque] [--json]\n");
    return CLI_USAGE;
  }
  mopt_diag d;
  mopt_payload_info in;
  double t0 = now_s();
  int rc = mopt_payload_delta_file(a.pos[0], a.pos[1], a.out, &a.o, &in, &d);
  if (rc) return fail("delta", rc, &d);
  summary("delta", &in, now_s() - t0, a.json);
  return CLI_OK;
}

int mopt_cli_apply(int argc, char **argv) {
  args a;
  if (parse("apply", argc, argv, 2, &a) || !a.out) {
    fprintf(stderr, "usage: mopt apply OLD PAYLOAD -o NEW [--json]\n");
    return CLI_USAGE;
  }
  mopt_diag d;
  mopt_payload_info in;
  double t0 = now_s();
  int rc = mopt_payload_apply_file(a.pos[0], a.pos[1], a.out, &in, &d);
  if (rc) return fail("apply", rc, &d);
  summary("apply", &in, now_s() - t0, a.json);
  return CLI_OK;
}

int mopt_cli_unpack(int argc, char **argv) {
  args a;
  if (parse("unpack", argc, argv, 1, &a) || !a.out) {
    fprintf(stderr, "usage: mopt unpack PAYLOAD -o MODEL [--json]\n");
    return CLI_USAGE;
  }
  mopt_diag d;
  mopt_payload_info in;
  double t0 = now_s();
  int rc = mopt_payload_unpack_file(a.pos[0], a.out, &in, &d);
  if (rc) return fail("unpack", rc, &d);
  summary("unpack", &in, now_s() - t0, a.json);
  return CLI_OK;
}

int mopt_cli_payload_info(int argc, char **argv) {
  args a;
  if (parse("payload-info", argc, argv, 1, &a)) {
    fprintf(stderr, "usage: mopt payload-info PAYLOAD\n");
    return CLI_USAGE;
  }
  mopt_diag d;
  mopt_payload_info in;
  int rc = mopt_payload_info_file(a.pos[0], &in, &d);
  if (rc) return fail("payload-info", rc, &d);
  summary("payload-info", &in, 0, 1);
  return CLI_OK;
}

int mopt_cli_verify_manifest(int argc, char **argv) {
  args a;
  if (parse("verify-manifest", argc, argv, 1, &a) || !a.key) {
    fprintf(stderr, "usage: mopt verify-manifest MANIFEST --key KEYFILE\n"
                    "  exit 0 only when a signature for KEYFILE's key verifies; 1 otherwise\n");
    return 1;   /* "0 only when the signature verifies": a usage error is not a verification */
  }
  mopt_diag d;
  char *man = NULL, *key = NULL;
  size_t ml = 0, kl = 0;
  int rc = cli_read_file(a.key, &key, &kl, &d);
  uint8_t pk[32];
  if (!rc) rc = mopt_manifest_parse_key((const uint8_t *)key, kl, pk, &d);
  if (!rc) rc = cli_read_file(a.pos[0], &man, &ml, &d);
  size_t so = 0, sl = 0;
  if (!rc) rc = mopt_manifest_verify((const uint8_t *)man, ml, pk, &so, &sl, &d);
  if (!rc) {
    char kid[65];
    mopt_manifest_keyid(pk, kid);
    fprintf(stderr, "verify-manifest: signature by key %s verifies over %zu signed bytes\n", kid, sl);
    fwrite(man + so, 1, sl, stdout);
    fputc('\n', stdout);
  }
  free(man);
  free(key);
  if (rc) {
    fail("verify-manifest", rc, &d);
    return 1;   /* the contract: 0 only when the signature verifies */
  }
  return CLI_OK;
}
