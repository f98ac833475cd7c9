/* worker.c — `mopt worker`, the job process moptd spawns (contracts.md §1).
 *
 * It applies its rlimits to itself, loads the model, runs the normalized spec, writes OUT and
 * REPORT atomically, and speaks JSON lines on stdout: progress events, then one done or error
 * event. SIGTERM sets a flag the progress callback turns into MOPT_ECANCELLED, so the pipeline
 * unwinds at the next tensor/pass boundary and nothing is written (exit 3).
 *
 * Trade-off: cancellation is cooperative (checked per tensor per pass) rather than killing
 * mid-kernel, so the worker never leaves partial files; the server's SIGKILL after its grace
 * period remains the backstop for a single huge kernel call.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static volatile sig_atomic_t g_term, g_xcpu;

static void on_term(int sig) {
  if (sig == SIGXCPU) g_xcpu = 1;
  g_term = 1;
}

/* The error a stop request turns into: CPU limit (SIGXCPU at the soft RLIMIT_CPU) or SIGTERM. */
static int stop_error(mopt_diag *d, const char *where) {
  if (g_xcpu)
    return mopt_diag_set(d, MOPT_ETIMEOUT, where, "CPU time limit (--max-cpu-s) exceeded");
  return mopt_diag_set(d, MOPT_ECANCELLED, where, "cancelled by SIGTERM");
}

static void emit(json_t *ev) {
  char *s = json_dumps(ev, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(6));
  if (s) {
    fputs(s, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(s);
  }
  json_decref(ev);
}

/* Copy of s with every byte that is not part of valid UTF-8 replaced by '?' (diagnostics quote
 * tensor names, which are untrusted bytes; JSON strings must be UTF-8). */
static void utf8_clean(const char *s, char *out, size_t cap) {
  size_t o = 0;
  const unsigned char *p = (const unsigned char *)s;
  while (*p && o + 5 < cap) {
    unsigned c = *p;
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    for (int i = 1; i < n; i++)
      if ((p[i] & 0xc0) != 0x80) n = 0;
    if (n == 2 && c < 0xc2) n = 0;                       /* overlong */
    if (n == 0) { out[o++] = '?'; p++; continue; }
    for (int i = 0; i < n; i++) out[o++] = (char)p[i];
    p += n;
  }
  out[o] = 0;
}

static int emit_error(int err, const mopt_diag *d, int exit_code) {
  char msg[600], where[300];
  utf8_clean(d && d->msg[0] ? d->msg : mopt_strerror(err), msg, sizeof msg);
  utf8_clean(d ? d->where : "", where, sizeof where);
  json_t *ev = json_pack("{s:s, s:s, s:s, s:s}", "event", "error", "code", mopt_errcode(err),
                         "message", msg, "where", where);
  if (!ev) ev = json_pack("{s:s, s:s, s:s, s:s}", "event", "error", "code", mopt_errcode(err),
                          "message", mopt_strerror(err), "where", "");
  emit(ev);
  fprintf(stderr, "mopt worker: %s: %s (%s)\n", mopt_errcode(err), msg, where);
  return exit_code;
}

typedef struct prog { double last; char step[32]; } prog;

static int on_progress(double f, const char *step, void *ctx) {
  prog *p = ctx;
  if (g_term) return 1;
  if (f - p->last >= 0.01 || strcmp(step, p->step) != 0 || f >= 1.0) {
    p->last = f;
    snprintf(p->step, sizeof p->step, "%s", step);
    emit(json_pack("{s:s, s:f, s:s}", "event", "progress", "progress", round(f * 1e4) / 1e4, "step", step));
  }
  return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-') return -1;
  *out = v;
  return 0;
}

int cli_worker(int argc, char **argv) {
  const char *in = NULL, *specp = NULL, *out = NULL, *rep = NULL, *anchor = NULL;
  uint64_t mem_mb = 0, cpu_s = 0;
  mopt_diag d;
  memset(&d, 0, sizeof d);
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (!strcmp(a, "--input") && v) in = v, i++;
    else if (!strcmp(a, "--spec") && v) specp = v, i++;
    else if (!strcmp(a, "--output") && v) out = v, i++;
    else if (!strcmp(a, "--report") && v) rep = v, i++;
    else if (!strcmp(a, "--anchor") && v) anchor = v, i++;
    else if (!strcmp(a, "--max-memory-mb") && v) bad = parse_u64(v, &mem_mb), i++;
    else if (!strcmp(a, "--max-cpu-s") && v) bad = parse_u64(v, &cpu_s), i++;
    else bad = 1;
    if (bad) {
      mopt_diag_set(&d, MOPT_EINVAL, a, "unknown or incomplete worker argument '%s'", a);
      return emit_error(MOPT_EINVAL, &d, CLI_USAGE);
    }
  }
  if (!in || !specp || !out || !rep) {
    mopt_diag_set(&d, MOPT_EINVAL, "argv",
                  "usage: mopt worker --input IN --spec SPEC --output OUT --report REPORT "
                  "[--anchor MODEL] [--max-memory-mb N] [--max-cpu-s N]");
    return emit_error(MOPT_EINVAL, &d, CLI_USAGE);
  }

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGXCPU, &sa, NULL);             /* soft CPU limit: stop like SIGTERM, say why */
  signal(SIGPIPE, SIG_IGN);

  if (mem_mb) {
#if defined(__SANITIZE_ADDRESS__)
    /* AddressSanitizer reserves terabytes of shadow address space: an address-space limit makes
     * every allocation fail. Sanitizer builds (make asan) run without the memory limit. */
    fprintf(stderr, "mopt worker: sanitizer build, --max-memory-mb %llu not enforced\n",
            (unsigned long long)mem_mb);
#else
    struct rlimit rl = {(rlim_t)mem_mb << 20, (rlim_t)mem_mb << 20};
    if (setrlimit(RLIMIT_AS, &rl) != 0) fprintf(stderr, "mopt worker: RLIMIT_AS: %s\n", strerror(errno));
#endif
  }
  if (cpu_s) {
    struct rlimit rl = {(rlim_t)cpu_s, (rlim_t)cpu_s + 5};
    if (setrlimit(RLIMIT_CPU, &rl) != 0) fprintf(stderr, "mopt worker: RLIMIT_CPU: %s\n", strerror(errno));
  }

  mopt_spec spec;
  mopt_spec_init(&spec);
  int rc = cli_load_spec(specp, &spec, &d);
  if (rc) {
    if (!d.where[0]) snprintf(d.where, sizeof d.where, "%s", specp);
    mopt_spec_free(&spec);
    return emit_error(rc, &d, cli_exit_code(rc));
  }
  spec.anchor_path = anchor;   /* used by passes whose spec names an "anchor" */
  prog p = {-1.0, ""};
  on_progress(0.0, "load", &p);
  mopt_model *m = NULL;
  rc = mopt_model_load_file(in, NULL, &m, &d);
  if (rc) {
    mopt_spec_free(&spec);
    return emit_error(rc, &d, cli_exit_code(rc));
  }
  if (g_term) rc = stop_error(&d, "load");
  mopt_model_allow_streaming(m, MOPT_STREAM_MIN_BYTES);  /* the model is only saved after the passes */
  char *report = NULL;
  if (!rc) rc = mopt_pipeline_run(m, &spec, on_progress, &p, &report, &d);
  mopt_spec_free(&spec);
  if (rc == MOPT_ECANCELLED && g_xcpu) {
    char step[sizeof d.where];
    snprintf(step, sizeof step, "%s", d.where);
    rc = stop_error(&d, step);
  }
  if (!rc && g_term) rc = stop_error(&d, "save");
  if (rc) {
    free(report);
    mopt_model_destroy(m);
    if (rc == MOPT_ECANCELLED || rc == MOPT_ETIMEOUT) return emit_error(rc, &d, CLI_INTERNAL);
    return emit_error(rc, &d, cli_exit_code(rc));
  }
  on_progress(1.0, "save", &p);
  rc = mopt_model_save_file(m, out, &d);
  mopt_model_destroy(m);
  if (!rc && report) rc = cli_write_file_atomic(rep, report, strlen(report), &d);
  free(report);
  if (!rc && g_term) rc = stop_error(&d, "save");
  if (rc) {
    unlink(out);
    unlink(rep);
    return emit_error(rc, &d, CLI_INTERNAL);
  }
  struct stat st;
  long long bytes = stat(out, &st) == 0 ? (long long)st.st_size : -1;
  emit(json_pack("{s:s, s:I}", "event", "done", "output_bytes", (json_int_t)bytes));
  return CLI_OK;
}
