/* config.c — moptd's configuration: one option table, one struct.
 *
 * Each row gives the option's name (flag --name and config-file key), its environment
 * variable, type, bounds, default and help; loading, validation and --help all come from the
 * table, so a new option is one row. Sources apply in order: defaults < config file < env <
 * flags. Trade-off: values are validated per source as they are applied, so an error names
 * exactly where the bad value came from, at the cost of validating a value that a later source
 * may override.
 */
#include "srv.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { OPT_STR = 0, OPT_U32 = 1, OPT_BYTES = 2, OPT_LEVEL = 3, OPT_LISTEN = 4 } opt_type;

typedef struct srv_option {
  const char *name;          /* flag and config-file key, with '_' */
  const char *env;
  opt_type type;
  uint64_t min, max;         /* numbers only */
  const char *def;           /* default as text, parsed like any other source */
  size_t off, size;          /* field in srv_config */
  const char *help;
} srv_option;

#define F(field) offsetof(srv_config, field), sizeof(((srv_config *)0)->field)
#define GiB (1024ull * 1024 * 1024)
#define MiB (1024ull * 1024)

static const srv_option options[] = {
  {"listen", "MOPTD_LISTEN", OPT_LISTEN, 0, 0, "127.0.0.1:8080", F(listen),
   "address to listen on, HOST:PORT or [IPV6]:PORT (port 0 picks a free port). A "
   "non-loopback address needs --tokens"},
  {"data", "MOPTD_DATA", OPT_STR, 1, 0, "./data", F(data),
   "data directory: SQLite index, blobs, temp files (created if absent)"},
  {"workers", "MOPTD_WORKERS", OPT_U32, 0, 256, "0", F(workers),
   "worker processes running jobs at once (0 = number of cores)"},
  {"threads", "MOPTD_THREADS", OPT_U32, 0, 256, "0", F(threads),
   "HTTP threads in the epoll thread pool (0 = number of cores)"},
  {"tokens", "MOPTD_TOKENS", OPT_STR, 0, 0, "", F(tokens),
   "bearer tokens file, lines \"scope[,scope] <sha256-hex> [label]\"; without it every "
   "request has every scope and only loopback addresses are allowed"},
  {"mopt", "MOPTD_MOPT", OPT_STR, 0, 0, "", F(mopt),
   "path of the mopt worker binary (empty = 'mopt' next to the moptd binary)"},
  {"config", "MOPTD_CONFIG", OPT_STR, 0, 0, "", F(config),
   "config file of \"key = value\" lines ('#' starts a comment); keys are the option names"},
  {"max_model_bytes", "MOPTD_MAX_MODEL_BYTES", OPT_BYTES, 1024, 1024 * GiB, "8GiB",
   F(max_model_bytes), "largest model upload in bytes (suffixes KiB, MiB, GiB); larger "
   "Content-Length gets 413 before the body is read"},
  {"max_json_bytes", "MOPTD_MAX_JSON_BYTES", OPT_BYTES, 1024, 64 * MiB, "1MiB",
   F(max_json_bytes), "largest JSON request body in bytes"},
  {"max_queued_jobs", "MOPTD_MAX_QUEUED_JOBS", OPT_U32, 1, 10000000, "1000",
   F(max_queued_jobs), "queued jobs before POST /v1/jobs answers 429"},
  {"job_timeout_s", "MOPTD_JOB_TIMEOUT_S", OPT_U32, 1, 7 * 86400, "3600", F(job_timeout_s),
   "wall-time limit of one job in seconds (also its CPU-time limit)"},
  {"job_memory_mb", "MOPTD_JOB_MEMORY_MB", OPT_U32, 64, 1048576, "8192", F(job_memory_mb),
   "address-space limit of one worker process in MiB"},
  {"conn_limit", "MOPTD_CONN_LIMIT", OPT_U32, 16, 1000000, "20000", F(conn_limit),
   "concurrent HTTP connections (capped by the open-files limit)"},
  {"per_ip_limit", "MOPTD_PER_IP_LIMIT", OPT_U32, 0, 1000000, "0", F(per_ip_limit),
   "concurrent connections from one IP address (0 = off: a load balancer, a proxy or a "
   "benchmark legitimately holds thousands of connections from one address)"},
  {"conn_timeout_s", "MOPTD_CONN_TIMEOUT_S", OPT_U32, 1, 86400, "60", F(conn_timeout_s),
   "idle connection timeout in seconds"},
  {"max_wait_s", "MOPTD_MAX_WAIT_S", OPT_U32, 0, 3600, "60", F(max_wait_s),
   "longest long-poll (?wait=S) in seconds"},
  {"retry_after_s", "MOPTD_RETRY_AFTER_S", OPT_U32, 1, 3600, "5", F(retry_after_s),
   "Retry-After seconds sent with 429 when the queue is full"},
  {"drain_timeout_s", "MOPTD_DRAIN_TIMEOUT_S", OPT_U32, 0, 3600, "30", F(drain_timeout_s),
   "on SIGTERM, how long to wait for in-flight requests to finish"},
  {"log_level", "MOPTD_LOG_LEVEL", OPT_LEVEL, 0, 3, "info", F(log_level),
   "least severe log level written: debug, info, warn, error"},
  {"ota_manifest_ttl_s", "MOPTD_OTA_MANIFEST_TTL_S", OPT_U32, 60, 31536000, "86400",
   F(ota_manifest_ttl_s), "OTA manifests expire this many seconds after they are issued"},
  {"ota_wait_s", "MOPTD_OTA_WAIT_S", OPT_U32, 0, 60, "10", F(ota_wait_s),
   "how long a manifest request waits for a payload still being computed before answering "
   "with what is ready"},
};
#define N_OPTIONS (sizeof options / sizeof options[0])
_Static_assert(sizeof options / sizeof options[0] == 21, "option table size");

static const char *const level_names[] = {"debug", "info", "warn", "error"};

size_t srv_config_option_count(void) { return N_OPTIONS; }
const char *srv_config_option_name(size_t i) { return i < N_OPTIONS ? options[i].name : NULL; }

/* Compares a user-supplied name (dashes or underscores) with a table name. */
static int name_eq(const char *user, size_t n, const char *name) {
  size_t i = 0;
  for (; i < n && name[i]; i++) {
    char c = user[i] == '-' ? '_' : user[i];
    if (c != name[i]) return 0;
  }
  return i == n && name[i] == 0;
}

static const srv_option *find_option(const char *name, size_t n) {
  for (size_t i = 0; i < N_OPTIONS; i++)
    if (name_eq(name, n, options[i].name)) return &options[i];
  return NULL;
}

static void flagname(const srv_option *o, char *buf, size_t n) {
  size_t i = 0;
  if (n < 3) return;
  buf[i++] = '-'; buf[i++] = '-';
  for (const char *p = o->name; *p && i + 1 < n; p++) buf[i++] = *p == '_' ? '-' : *p;
  buf[i] = 0;
}

/* Parses a byte count with an optional binary suffix (k, KiB, m, MiB, g, GiB, t, TiB). */
static int parse_bytes(const char *s, uint64_t *out) {
  char *end;
  if (!isdigit((unsigned char)*s)) return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno) return -1;
  while (*end == ' ') end++;
  uint64_t mul = 1;
  if (*end) {
    char u = (char)tolower((unsigned char)*end);
    const char *rest = end + 1;
    if (u == 'b' && *rest == 0) mul = 1;
    else {
      if (u == 'k') mul = 1024ull;
      else if (u == 'm') mul = MiB;
      else if (u == 'g') mul = GiB;
      else if (u == 't') mul = 1024ull * GiB;
      else return -1;
      if (*rest && strcasecmp(rest, "ib") != 0 && strcasecmp(rest, "b") != 0) return -1;
    }
  }
  if (v > UINT64_MAX / mul) return -1;
  *out = v * mul;
  return 0;
}

int srv_listen_split(const char *listen, char *host, size_t hostn, uint16_t *port) {
  const char *colon;
  size_t hl;
  if (!listen || !*listen) return MOPT_EINVAL;
  if (listen[0] == '[') {
    const char *rb = strchr(listen, ']');
    if (!rb || rb[1] != ':') return MOPT_EINVAL;
    hl = (size_t)(rb - listen - 1);
    if (hl == 0 || hl >= hostn) return MOPT_EINVAL;
    memcpy(host, listen + 1, hl);
    host[hl] = 0;
    colon = rb + 1;
  } else {
    colon = strrchr(listen, ':');
    if (!colon) return MOPT_EINVAL;
    hl = (size_t)(colon - listen);
    if (hl == 0 || hl >= hostn || memchr(listen, ':', hl)) return MOPT_EINVAL;
    memcpy(host, listen, hl);
    host[hl] = 0;
  }
  const char *p = colon + 1;
  if (!*p || strlen(p) > 5) return MOPT_EINVAL;
  unsigned long v = 0;
  for (; *p; p++) {
    if (!isdigit((unsigned char)*p)) return MOPT_EINVAL;
    v = v * 10 + (unsigned long)(*p - '0');
  }
  if (v > 65535) return MOPT_EINVAL;
  *port = (uint16_t)v;
  return 0;
}

int srv_host_is_loopback(const char *host) {
  unsigned char a4[4], a6[16];
  if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "ip6-localhost") == 0) return 1;
  if (inet_pton(AF_INET, host, a4) == 1) return a4[0] == 127;
  if (inet_pton(AF_INET6, host, a6) == 1) {
    static const unsigned char lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a6, lo, 16) == 0) return 1;
    if (memcmp(a6, v4mapped, 12) == 0) return a6[12] == 127;
  }
  return 0;
}

/* Applies text to option o in cfg; on error fills err naming the option and source. */
static int apply(srv_config *cfg, const srv_option *o, const char *text, const char *source,
                 char *err, size_t errn) {
  char fl[64];
  void *field = (char *)cfg + o->off;
  flagname(o, fl, sizeof fl);
  switch (o->type) {
  case OPT_STR:
  case OPT_LISTEN: {
    size_t n = strlen(text);
    if (n >= o->size) {
      snprintf(err, errn, "%s (from %s): value is %zu bytes, at most %zu allowed", fl, source,
               n, o->size - 1);
      return 2;
    }
    if (o->min && n == 0) {
      snprintf(err, errn, "%s (from %s): must not be empty", fl, source);
      return 2;
    }
    if (o->type == OPT_LISTEN) {
      char host[256];
      uint16_t port;
      if (srv_listen_split(text, host, sizeof host, &port) != 0) {
        snprintf(err, errn, "%s (from %s): '%s' is not HOST:PORT (port 0..65535, IPv6 as "
                 "[ADDR]:PORT)", fl, source, text);
        return 2;
      }
    }
    memcpy(field, text, n + 1);
    return 0;
  }
  case OPT_LEVEL:
    for (uint32_t i = 0; i < 4; i++)
      if (strcasecmp(text, level_names[i]) == 0) {
        *(uint32_t *)field = i;
        return 0;
      }
    snprintf(err, errn, "%s (from %s): '%s' is not one of debug, info, warn, error", fl,
             source, text);
    return 2;
  case OPT_U32:
  case OPT_BYTES: {
    uint64_t v;
    int bad;
    if (o->type == OPT_BYTES) bad = parse_bytes(text, &v);
    else {
      char *end;
      errno = 0;
      bad = !isdigit((unsigned char)*text);
      v = bad ? 0 : strtoull(text, &end, 10);
      if (!bad && (errno || *end)) bad = 1;
    }
    if (bad) {
      snprintf(err, errn, "%s (from %s): '%s' is not a %s", fl, source, text,
               o->type == OPT_BYTES ? "byte count (e.g. 1048576 or 1MiB)" : "whole number");
      return 2;
    }
    if (v < o->min || v > o->max) {
      snprintf(err, errn, "%s (from %s): %" PRIu64 " is out of range, must be between %" PRIu64
               " and %" PRIu64, fl, source, v, o->min, o->max);
      return 2;
    }
    if (o->size == sizeof(uint32_t)) *(uint32_t *)field = (uint32_t)v;
    else *(uint64_t *)field = v;
    return 0;
  }
  }
  return 2;
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
    s[--n] = 0;
  return s;
}

static int load_file(srv_config *cfg, const char *path, char *err, size_t errn) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errn, "--config: cannot open '%s': %s", path, strerror(errno));
    return 2;
  }
  char line[4096], src[1200];
  unsigned lineno = 0;
  int rc = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *s = trim(line);
    if (!*s) continue;
    char *eq = strchr(s, '=');
    snprintf(src, sizeof src, "%s line %u", path, lineno);
    if (!eq) {
      snprintf(err, errn, "%s: expected \"key = value\"", src);
      rc = 2;
      break;
    }
    *eq = 0;
    char *key = trim(s), *val = trim(eq + 1);
    size_t vl = strlen(val);
    if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
      val[vl - 1] = 0;
      val++;
    }
    const srv_option *o = find_option(key, strlen(key));
    if (!o) {
      snprintf(err, errn, "%s: unknown option '%s' (see moptd --help)", src, key);
      rc = 2;
      break;
    }
    if (strcmp(o->name, "config") == 0) continue;   /* no nesting */
    if ((rc = apply(cfg, o, val, src, err, errn)) != 0) break;
  }
  fclose(f);
  return rc;
}

/* Prints text wrapped at about 92 columns, each line indented by indent spaces. */
static void wrap(FILE *out, const char *text, int indent) {
  const int width = 92;
  const char *p = text;
  while (*p) {
    int room = width - indent;
    int n = (int)strlen(p);
    if (n > room) {
      n = room;
      while (n > 0 && p[n] != ' ') n--;
      if (n == 0) n = room;
    }
    fprintf(out, "%*s%.*s\n", indent, "", n, p);
    p += n;
    while (*p == ' ') p++;
  }
}

void srv_config_help(FILE *out) {
  fprintf(out,
          "usage: moptd [--listen HOST:PORT] [--data DIR] [--workers N] [--tokens FILE] "
          "[--config FILE] [--OPTION VALUE]...\n"
          "moptd serves the model-optimization REST API (see openapi.yaml).\n"
          "Every option can be given as a flag (--name VALUE or --name=VALUE, '-' or '_'), an\n"
          "environment variable, or a config-file line \"name = value\" (name with '_').\n"
          "Later sources win: defaults < config file < environment < flags.\n\n");
  for (size_t i = 0; i < N_OPTIONS; i++) {
    const srv_option *o = &options[i];
    char fl[64], type[96];
    flagname(o, fl, sizeof fl);
    switch (o->type) {
    case OPT_STR: snprintf(type, sizeof type, "TEXT"); break;
    case OPT_LISTEN: snprintf(type, sizeof type, "HOST:PORT"); break;
    case OPT_LEVEL: snprintf(type, sizeof type, "debug|info|warn|error"); break;
    case OPT_U32:
      snprintf(type, sizeof type, "N (%" PRIu64 "..%" PRIu64 ")", o->min, o->max);
      break;
    case OPT_BYTES:
      snprintf(type, sizeof type, "BYTES (%" PRIu64 "..%" PRIu64 ")", o->min, o->max);
      break;
    }
    fprintf(out, "  %s %s\n      env %s, default \"%s\"\n", fl, type, o->env, o->def);
    wrap(out, o->help, 6);
  }
  fprintf(out, "  --help\n      print this table and exit\n");
}

static const char *real_getenv(const char *name) { return getenv(name); }

int srv_config_load(srv_config *cfg, int argc, char **argv, srv_getenv_fn getenv_fn,
                    uint32_t ncores, FILE *out, char *err, size_t errn) {
  int rc;
  if (!getenv_fn) getenv_fn = real_getenv;
  if (ncores == 0) ncores = 1;
  memset(cfg, 0, sizeof *cfg);
  for (size_t i = 0; i < N_OPTIONS; i++)
    if ((rc = apply(cfg, &options[i], options[i].def, "default", err, errn)) != 0) return rc;

  /* First pass over argv: --help, syntax, and where the config file is. */
  const char *config_path = getenv_fn("MOPTD_CONFIG");
  const char *config_src = "MOPTD_CONFIG";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      srv_config_help(out ? out : stdout);
      return 1;
    }
    if (strncmp(a, "--", 2) != 0) {
      snprintf(err, errn, "unexpected argument '%s' (options are --name VALUE; see --help)", a);
      return 2;
    }
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t nl = eq ? (size_t)(eq - name) : strlen(name);
    const srv_option *o = find_option(name, nl);
    if (!o) {
      snprintf(err, errn, "unknown option '%.*s' (see --help)", (int)(nl + 2), a);
      return 2;
    }
    const char *val = eq ? eq + 1 : NULL;
    if (!val) {
      if (i + 1 >= argc) {
        snprintf(err, errn, "--%.*s needs a value", (int)nl, name);
        return 2;
      }
      val = argv[++i];
    }
    if (strcmp(o->name, "config") == 0) {
      config_path = val;
      config_src = "--config";
    }
  }
  (void)config_src;
  if (config_path && *config_path) {
    if ((rc = apply(cfg, find_option("config", 6), config_path, "config", err, errn)) != 0)
      return rc;
    if ((rc = load_file(cfg, config_path, err, errn)) != 0) return rc;
  }
  for (size_t i = 0; i < N_OPTIONS; i++) {
    const char *v = getenv_fn(options[i].env);
    if (!v || strcmp(options[i].name, "config") == 0) continue;
    if ((rc = apply(cfg, &options[i], v, options[i].env, err, errn)) != 0) return rc;
  }
  for (int i = 1; i < argc; i++) {
    const char *name = argv[i] + 2, *eq = strchr(name, '=');
    size_t nl = eq ? (size_t)(eq - name) : strlen(name);
    const srv_option *o = find_option(name, nl);
    const char *val = eq ? eq + 1 : argv[++i];
    char src[80];
    assert(o);
    snprintf(src, sizeof src, "command line");
    if (strcmp(o->name, "config") == 0) continue;
    if ((rc = apply(cfg, o, val, src, err, errn)) != 0) return rc;
  }
  if (cfg->workers == 0) cfg->workers = ncores;
  if (cfg->threads == 0) cfg->threads = ncores;
  return 0;
}

int srv_config_check(const srv_config *cfg, char *err, size_t errn) {
  char host[256];
  uint16_t port;
  if (srv_listen_split(cfg->listen, host, sizeof host, &port) != 0) {
    snprintf(err, errn, "--listen: '%s' is not HOST:PORT", cfg->listen);
    return 2;
  }
  if (!cfg->tokens[0] && !srv_host_is_loopback(host)) {
    snprintf(err, errn, "--listen %s: refusing to listen on a non-loopback address without "
             "--tokens FILE (every request would have every scope); use 127.0.0.1 or give a "
             "tokens file", cfg->listen);
    return 2;
  }
  return 0;
}
